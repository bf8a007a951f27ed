"""What users do that the pruned forward must serve right or refuse with a clear error: no local tokens, decoding
strategies that crop the cache, a chunked prefill, numpy settings, quantized layers, scorers moved between models,
deep copies, tensor arguments where positions would index the kept tokens, two threads on one model."""
import copy
import dataclasses
import gc
import threading

import numpy as np
import pytest
import torch
from hf_tiny import PROMPT, PRUNING, prompts, tiny_model

from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.hf import (apply_sdtp, key_positions, make_scorer, prefill_prunes, protected_tail, remove_sdtp,
                             sdtp_disabled, sdtp_predictors, set_scorer)
from sdtp_kernels.hf.model_call import output_cache
from sdtp_kernels.hf.scorers import Scorer


def test_the_last_prompt_token_survives_every_stage_without_local_tokens():
    """Generation reads the last token's logits: it is kept even with local_ratio = 0 and no sinks."""
    config = PRUNING.replace(num_sink=0, local_ratio=0.0, keep_ratio=0.5)
    assert config.local_count(10) == 1 and config.local_count(0) == 0
    model = apply_sdtp(tiny_model("llama", "sdpa"), config)
    ids, mask = prompts()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
    for kept in key_positions(output_cache(out)):
        assert kept[:, -1].tolist() == [PROMPT - 1] * ids.shape[0]


@pytest.mark.parametrize("name", ["llama", "mistral"])  # Mistral: every layer slides (a 4096-token window)
@pytest.mark.parametrize("strategy", [dict(prompt_lookup_num_tokens=4), dict(assistant_model="llama")])
def test_decoding_that_crops_the_cache_is_refused(strategy, name):
    """Assisted and prompt-lookup decoding crop the cache by position; a pruned layer's cache is compacted, so the
    next forward finds it out of step with its token set and says so (not silently other tokens), sliding-window
    layers included."""
    model = apply_sdtp(tiny_model(name, "sdpa"), PRUNING)
    ids, _ = prompts(batch=1)
    ids = torch.cat([ids[:, :20], ids[:, :20]], 1)  # repeated n-grams: prompt lookup finds candidates
    if "assistant_model" in strategy:
        strategy = dict(assistant_model=tiny_model("llama", "sdpa", seed=5))
    with pytest.raises(RuntimeError, match="changed outside SDTP's forwards"), torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False, **strategy)


def test_a_chunked_prefill_is_refused_while_pruning():
    """Chunks after the first would run as a continuation, unpruned."""
    model = apply_sdtp(tiny_model("llama", "sdpa"), PRUNING)
    ids, mask = prompts()
    with pytest.raises(NotImplementedError, match="prefill_chunk_size"), torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, prefill_chunk_size=16)
    with sdtp_disabled(model), torch.no_grad():
        chunked = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, prefill_chunk_size=16)
        assert torch.equal(chunked, model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False))
    remove_sdtp(model)
    assert "_prefill" not in vars(model)


def test_numpy_numbers_configure_like_python_ones():
    config = SDTPConfig(start_layer=np.int64(2), keep_ratio=np.float64(0.5), local_ratio=np.float64(0.1))
    assert config == SDTPConfig(start_layer=2, keep_ratio=0.5, local_ratio=0.1)
    assert type(config.start_layer) is int and type(config.keep_ratio) is float
    assert config.kept_count(100, 1) == 50 and SDTPConfig.from_json(config.to_json()) == config


def test_a_layer_with_integer_weights_gets_float_predictors():
    """A quantized layer's first parameter may be int8 (bitsandbytes' layout): the predictors take the layer's
    first floating-point one."""
    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight = torch.nn.Parameter(layer.self_attn.q_proj.weight.data.to(torch.int8),
                                                           requires_grad=False)
    apply_sdtp(model, PRUNING)
    assert {p.dtype for p in sdtp_predictors(model).parameters()} == {torch.float32}


def test_attention_scorer_on_bloom_and_scorers_moved_between_models():
    bloom = apply_sdtp(tiny_model("bloom"), PRUNING, scorer="attention")  # its attention is `self_attention`
    ids, mask = prompts()
    with torch.no_grad():
        bloom(ids, attention_mask=mask)
    llama = apply_sdtp(tiny_model("llama"), PRUNING)
    scorer = make_scorer("attention")
    set_scorer(llama, scorer)
    assert set_scorer(llama, scorer) is scorer  # already its scorer: nothing changes, its hooks stay
    with torch.no_grad():
        llama(ids, attention_mask=mask)
    other = apply_sdtp(tiny_model("llama", seed=1), PRUNING)
    with pytest.raises(ValueError, match="another model"):
        set_scorer(other, scorer)
    remove_sdtp(llama)
    set_scorer(other, scorer)  # free again once its model let it go
    with torch.no_grad():
        other(ids, attention_mask=mask)


@dataclasses.dataclass  # eq=True makes it unhashable: scorers are looked up by identity, not by hash
class _LengthScorer(Scorer):
    name = "length"
    scale: float = 1.0

    def score(self, stage, hidden, predictor, valid):
        return self.scale * hidden.float().norm(dim=-1)


@pytest.mark.parametrize("scorer", ["predictor", "attention"])
def test_a_deep_copy_of_a_patched_model_prunes_on_its_own(scorer):
    """The copy's hooks are the copy's: its attention maps reach its own scorer, and removing SDTP from it leaves the
    original patched."""
    model = apply_sdtp(tiny_model("llama"), PRUNING, scorer=scorer)
    ids, mask = prompts()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        twin = copy.deepcopy(model)
        torch.testing.assert_close(twin(ids, attention_mask=mask).logits, expected, atol=0, rtol=0)
        remove_sdtp(twin)
        assert twin(ids, attention_mask=mask).logits.shape[1] == PROMPT
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, expected, atol=0, rtol=0)


def test_a_scorer_need_not_be_hashable_and_is_free_once_its_model_is_dropped():
    scorer = _LengthScorer()
    ids, mask = prompts()
    model = apply_sdtp(tiny_model("llama"), PRUNING, scorer=scorer)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    gc.disable()  # the model lives on in its reference cycles: the scorer is still freed for the next model
    try:
        del model
        other = apply_sdtp(tiny_model("llama", seed=1), PRUNING, scorer=scorer)
    finally:
        gc.enable()
    with torch.no_grad():
        other(ids, attention_mask=mask)


def test_arguments_that_would_index_kept_tokens_or_are_the_wrong_kind_are_refused():
    model = apply_sdtp(tiny_model("llama"), PRUNING)
    ids, mask = prompts()
    with pytest.raises(ValueError, match="logits_to_keep"), torch.no_grad():
        model(ids, attention_mask=mask, logits_to_keep=torch.tensor([0, PROMPT - 1]))
    with torch.no_grad():
        assert model(ids, attention_mask=mask, logits_to_keep=1).logits.shape[1] == 1
    with protected_tail(model, (t for t in (3, 5))):  # a generator: checked and kept, not spent
        with torch.no_grad():
            model(ids, attention_mask=mask)
    with pytest.raises(TypeError, match="'config_or_dir'"):
        apply_sdtp(tiny_model("llama"), {"keep_ratio": 0.5})

    class DuckScorer:  # Scorer's methods, but not its subclass
        name = "duck"

        def bind(self, *args):
            pass

        def unbind(self):
            pass

        def score(self, stage, hidden, predictor, valid):
            return hidden.sum(-1)

    with pytest.raises(TypeError, match="scorer must be a name .* subclass of sdtp_kernels.hf.Scorer, got a Duck"):
        make_scorer(DuckScorer())
    with pytest.raises(ValueError, match="1 protected tails for 2 rows"):
        prefill_prunes(model, [3, 200], tails=[0])


def test_a_second_threads_forward_is_refused_while_one_runs():
    """The pruned layers share their forward's state on the model: another thread's call while one runs raises a
    clear error (it crashed inside, or could have mixed two prompts' tokens), and the running forward is undisturbed."""
    model = apply_sdtp(tiny_model("llama"), PRUNING)
    ids, mask = prompts()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    inside, go, result = threading.Event(), threading.Event(), {}

    def pause(module, args):
        inside.set()
        assert go.wait(30)

    hook = model.model.layers[5].register_forward_pre_hook(pause)  # a pruned layer, mid-forward

    def first():
        with torch.no_grad():
            result["logits"] = model(ids, attention_mask=mask).logits

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(30)
        hook.remove()
        with pytest.raises(RuntimeError, match="running a forward in another thread"), torch.no_grad():
            model(ids[:1], attention_mask=mask[:1])
    finally:
        go.set()
        thread.join(30)
    assert torch.equal(result["logits"], expected)
    with torch.no_grad():  # and the next call runs
        assert torch.equal(model(ids, attention_mask=mask).logits, expected)
