"""Sliding-window attention in the pruned forward: with windows shorter than the prompt (16 tokens, prompts of 40),
every layer or alternating with full layers, the pruned prefill and 32 decoded tokens equal the masked simulation
that applies the same windows; a window longer than the prompt is full attention."""
import pytest
import torch
from hf_tiny import PROMPT, PRUNING, WINDOWED, prompts, spread_predictors, tiny_model
from masked_reference import assert_kept_as_simulated, masked_forward, masked_generate

from sdtp_kernels.hf import apply_sdtp, sdtp_predictors
from sdtp_kernels.hf.model_call import output_cache

WINDOW = 16
VARIANTS = [("mistral", "eager"), ("mistral", "sdpa"), ("qwen2", "sdpa"), ("gemma2", "eager"), ("gemma3", "sdpa"),
            ("gpt_oss", "eager"), ("cohere2", "sdpa")]


def _model(name, attn, **overrides):
    return spread_predictors(apply_sdtp(tiny_model(name, attn, **{**WINDOWED[name](WINDOW), **overrides}), PRUNING),
                             0.5)


@pytest.mark.parametrize("name, attn", VARIANTS)
def test_pruned_prefill_with_a_short_window_equals_the_masked_simulation(name, attn):
    assert WINDOW < PROMPT
    model = _model(name, attn)
    ids, mask = prompts()
    with torch.no_grad():
        pruned = model(ids, attention_mask=mask, use_cache=True)
    simulated, alive = masked_forward(model, PRUNING, sdtp_predictors(model), ids, mask, use_cache=True)
    assert_kept_as_simulated(output_cache(pruned), alive)
    torch.testing.assert_close(pruned.logits[:, -1], simulated.logits[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, attn", VARIANTS)
def test_32_decoded_tokens_with_a_short_window_equal_the_masked_simulation(name, attn):
    model = _model(name, attn)
    ids, mask = prompts()
    expected, _ = masked_generate(model, PRUNING, sdtp_predictors(model), ids, mask, max_new_tokens=32,
                                  do_sample=False)
    with torch.no_grad():
        got = model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False)
    assert torch.equal(got, expected)


def test_qwen2_slides_from_max_window_layers_on():
    config = _model("qwen2", "sdpa").config
    assert config.layer_types == ["full_attention"] * 4 + ["sliding_attention"] * (config.num_hidden_layers - 4)


def test_a_window_longer_than_the_prompt_is_full_attention():
    windowed, full = _model("mistral", "sdpa", sliding_window=4096), _model("mistral", "sdpa", sliding_window=None)
    full.load_state_dict(windowed.state_dict())
    ids, mask = prompts()
    with torch.no_grad():
        torch.testing.assert_close(windowed(ids, attention_mask=mask).logits, full(ids, attention_mask=mask).logits,
                                   atol=0, rtol=0)
        assert torch.equal(windowed.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False),
                           full.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False))


@pytest.mark.parametrize("name, attn", VARIANTS)
def test_the_simulations_windows_are_transformers_own(name, attn):
    """Keeping every token, the masked simulation (whose masks replace transformers' own from start_layer on) gives
    the unpatched model's logits and tokens: its windows are the model's."""
    plain, model = tiny_model(name, attn, **WINDOWED[name](WINDOW)), _model(name, attn)  # one seed: the same weights
    keep_all = PRUNING.replace(keep_ratio=1.0)
    ids, mask = prompts()
    with torch.no_grad():
        expected = plain(ids, attention_mask=mask).logits[:, -1]
        tokens = plain.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
    simulated, _ = masked_forward(model, keep_all, sdtp_predictors(model), ids, mask)
    torch.testing.assert_close(simulated.logits[:, -1], expected, atol=1e-5, rtol=1e-5)
    generated, _ = masked_generate(model, keep_all, sdtp_predictors(model), ids, mask, max_new_tokens=24,
                                   do_sample=False)
    assert torch.equal(generated, tokens)
