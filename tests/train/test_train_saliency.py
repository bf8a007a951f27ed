"""Marking: gradient x input saliency against finite differences, its options, and its shards on disk."""
import functools

import pytest
import torch
import torch.nn.functional as F
from hf_tiny import PRUNING, VOCAB, tiny_model
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from sdtp_kernels.hf.families import family_of
from sdtp_kernels.train.data import IGNORE_INDEX, Example, collate
from sdtp_kernels.train.options import SaliencyOptions
from sdtp_kernels.train.saliency import token_saliency
from sdtp_kernels.train.schedule import protected_tokens
from sdtp_kernels.train.shards import SaliencyShards, ShardWriter, batch_saliency


def _batch(seed: int = 0):
    """Two rows of different lengths (the shorter left-padded): one with an answer, one labelled throughout."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, VOCAB, (30,), generator=g).tolist()
    text = torch.randint(1, VOCAB, (24,), generator=g).tolist()
    examples = [Example(prompt + [5, 6], [IGNORE_INDEX] * 30 + [5, 6], 30), Example(text, text, 24)]
    return collate(examples, [0, 1])


def _float64_llama():
    """The tiny Llama computing in float64 throughout: transformers' RMSNorm computes in float32 whatever the input
    dtype, and so does eager attention's softmax; either drowns a finite difference in rounding noise."""
    model = tiny_model("llama", "sdpa").double()

    def rms_norm(module, x):
        return module.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)

    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            module.forward = functools.partial(rms_norm, module)
    return model


def _row_loss(model, batch, row, layer, token, scale):
    """Row `row`'s mean LM loss with the input of `layer` at `token` multiplied by `scale`."""

    def pre_hook(module, args, kwargs):
        hidden = args[0].clone()
        hidden[row, token] *= scale
        return (hidden, *args[1:]), kwargs

    layers = family_of(model).decoder_layers(model)
    with layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True), torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return F.cross_entropy(logits[row, :-1], batch.labels[row, 1:], ignore_index=IGNORE_INDEX).item()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_rows_saliency_does_not_depend_on_what_it_is_batched_with(attention):
    """A text row (a label on every token) left-padded beside a longer row marks as it does alone: its first token
    carries no label, so no loss term is read at the padding before it (eager attention's fully masked pad rows
    attend everywhere, so such a term leaked into every token's gradient)."""
    torch.manual_seed(0)
    model = tiny_model("llama", attention).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    short, long = (torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (20, 30))
    rows = [Example(short, list(short), 20), Example(long, list(long), 30)]
    options = SaliencyOptions(normalization="zscore")
    alone = token_saliency(model, PRUNING, collate(rows[:1], [0]), options)[:, 0]
    batched = token_saliency(model, PRUNING, collate(rows, [0, 1]), options)[:, 0, 10:]
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_saliency_matches_finite_differences():
    model = _float64_llama()
    batch = _batch()
    saliency = token_saliency(model, PRUNING, batch, SaliencyOptions(normalization="none"))
    stage_layers = PRUNING.stage_layers(8)
    assert saliency.shape == (len(stage_layers), 2, 32)
    eps = 1e-5
    # (stage, row, column): early, middle and last prompt tokens, the answer's first token, a padded row's token.
    for stage, row, column in [(0, 0, 3), (1, 0, 17), (2, 0, 29), (0, 0, 30), (1, 1, 12), (2, 1, 20)]:
        layer = stage_layers[stage]
        derivative = (
            _row_loss(model, batch, row, layer, column, 1 + eps) - _row_loss(model, batch, row, layer, column, 1 - eps)
        ) / (2 * eps)
        # Signed saliency is the importance: minus the derivative of the loss along x.
        assert saliency[stage, row, column].item() == pytest.approx(-derivative, rel=1e-5, abs=1e-9)
    assert torch.all(saliency[:, 1, :8] == 0)  # padding


def test_absolute_and_normalizations():
    model = tiny_model("llama", "eager")
    batch = _batch()
    raw = token_saliency(model, PRUNING, batch, SaliencyOptions(normalization="none"))
    absolute = token_saliency(model, PRUNING, batch, SaliencyOptions(absolute=True, normalization="none"))
    torch.testing.assert_close(absolute, raw.abs())

    real = batch.attention_mask.bool()
    ranked = batch.prompt_mask & ~protected_tokens(PRUNING, batch.prompt_mask, real)
    zscore = token_saliency(model, PRUNING, batch, SaliencyOptions(normalization="zscore"))
    maxabs = token_saliency(model, PRUNING, batch, SaliencyOptions(normalization="maxabs"))
    for row in range(2):
        values = zscore[:, row, ranked[row]]
        torch.testing.assert_close(values.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(values.std(1, unbiased=False), torch.ones(3))
        assert torch.allclose(maxabs[:, row, ranked[row]].abs().amax(1), torch.ones(3))
    # One affine map per row and stage: the order of the ranked tokens is the raw saliency's.
    torch.testing.assert_close(zscore[:, 0, ranked[0]].argsort(), raw[:, 0, ranked[0]].argsort())


def test_shards_round_trip(tmp_path):
    batch = _batch()
    saliency = torch.randn(3, 2, 32)
    writer = ShardWriter(str(tmp_path), {"stage_layers": [2, 4, 6], **SaliencyOptions().describe()}, 1)
    for row in range(2):
        real = batch.attention_mask[row].bool()
        writer.add(batch.input_ids[row][real], saliency[:, row][:, real])
    index = writer.close()
    assert [shard["records"] for shard in index["shards"]] == [1, 1]
    shards = SaliencyShards(str(tmp_path))
    assert SaliencyOptions.from_description(shards.index) == SaliencyOptions()
    torch.testing.assert_close(batch_saliency(shards, batch), saliency * batch.attention_mask)

    other = collate([Example([1, 2, 3], [1, 2, 3], 3)], [1])
    with pytest.raises(ValueError, match="record 1 of the training data is not the record 1"):
        batch_saliency(shards, other)
