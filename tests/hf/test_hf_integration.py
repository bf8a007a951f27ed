"""The transformers integration against the unpatched model and the masked simulation with python_ref's ops, on tiny
seeded models of every supported family (fp32, 8 layers, three pruning stages)."""
import copy
import dataclasses
import gc
import inspect
import json
import weakref

import pytest
import torch
from hf_tiny import DECODER, LAYERS, MODELS, PAD, PROMPT, PRUNING, VARIANTS, prompts, spread_predictors, tiny_model
from masked_reference import masked_forward, masked_generate
from transformers import GPT2Config, GPT2LMHeadModel

from sdtp_kernels.hf import (
    SUPPORTED_MODELS,
    apply_sdtp,
    key_positions,
    remove_sdtp,
    save_sdtp,
    sdtp_disabled,
    sdtp_predictors,
)
from sdtp_kernels.hf.model_call import output_cache

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def greedy(model, ids, mask, n=8, **kwargs):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, **kwargs)


def real_logits(model, ids, mask):
    """Logits of the real (unpadded) tokens, flattened."""
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits[mask.bool()]


def alive_of(slots):
    """[B, keys] unpruned columns (-1 = empty) -> [B, PROMPT] bool, the prompt tokens those keys cover."""
    kept = torch.zeros(slots.shape[0], PROMPT + 1, dtype=torch.bool)
    prompt = (slots >= 0) & (slots < PROMPT)
    return kept.scatter(1, torch.where(prompt, slots, PROMPT), True)[:, :PROMPT]


@pytest.mark.parametrize("name, attn", VARIANTS)
def test_keep_ratio_one_and_disabled_pruning_equal_the_unpatched_model(name, attn):
    model = tiny_model(name, attn)
    ids, mask = prompts()
    logits, tokens = real_logits(model, ids, mask), greedy(model, ids, mask)
    apply_sdtp(model, dataclasses.replace(PRUNING, keep_ratio=1.0))
    torch.testing.assert_close(real_logits(model, ids, mask), logits, atol=1e-5, rtol=0)
    assert torch.equal(greedy(model, ids, mask), tokens)
    remove_sdtp(model)
    apply_sdtp(model, PRUNING)
    with sdtp_disabled(model):
        torch.testing.assert_close(real_logits(model, ids, mask), logits, atol=1e-5, rtol=0)
        assert torch.equal(greedy(model, ids, mask), tokens)


@pytest.mark.parametrize("name", MODELS)
def test_remove_sdtp_restores_the_model(name):
    model = tiny_model(name)
    ids, mask = prompts()
    keys, logits = set(model.state_dict()), real_logits(model, ids, mask)
    layer_types = [type(m) for m in model.modules()]
    apply_sdtp(model, PRUNING)
    with torch.no_grad():
        assert model(ids, attention_mask=mask).logits.shape[1] < PROMPT  # it runs pruned
    remove_sdtp(model)
    assert set(model.state_dict()) == keys
    assert [type(m) for m in model.modules()] == layer_types
    torch.testing.assert_close(real_logits(model, ids, mask), logits, atol=0, rtol=0)


@pytest.mark.parametrize("name, attn", VARIANTS)
def test_pruned_prefill_equals_the_masked_simulation(name, attn):
    model = apply_sdtp(tiny_model(name, attn), PRUNING)
    ids, mask = prompts()
    with torch.no_grad():
        pruned = model(ids, attention_mask=mask, use_cache=True)
    simulated, alive = masked_forward(model, PRUNING, sdtp_predictors(model), ids, mask, use_cache=True)
    cache, sim_cache = output_cache(pruned), output_cache(simulated)

    stage_layers = PRUNING.stage_layers(LAYERS)
    lengths = mask.sum(1).tolist()
    slots = key_positions(cache)
    assert len(slots) == len(stage_layers) == 3
    for stage, kept in enumerate(slots, start=1):
        assert torch.equal(alive_of(kept), alive[stage]), f"stage {stage} kept other tokens"
        assert kept.shape[1] == max(PRUNING.kept_count(n, stage) for n in lengths)
    torch.testing.assert_close(pruned.logits[:, -1], simulated.logits[:, -1], atol=1e-4, rtol=1e-4)

    for layer in range(LAYERS):
        keys, values = cache.layers[layer].keys, cache.layers[layer].values
        stage = sum(s <= layer for s in stage_layers)
        if stage == 0:
            assert keys.shape[-2] == PROMPT
            continue
        held = slots[stage - 1]
        assert keys.shape[-2] == held.shape[1] < PROMPT
        for row in range(held.shape[0]):
            columns = held[row][held[row] >= 0]
            occupied = held[row] >= 0
            for got, full in ((keys, sim_cache.layers[layer].keys), (values, sim_cache.layers[layer].values)):
                torch.testing.assert_close(got[row][:, occupied], full[row][:, columns], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, attn", VARIANTS)
def test_generate_32_tokens_equals_the_masked_simulation(name, attn):
    model = apply_sdtp(tiny_model(name, attn), PRUNING)
    ids, mask = prompts()
    expected, _ = masked_generate(model, PRUNING, sdtp_predictors(model), ids, mask, max_new_tokens=32, do_sample=False)
    assert torch.equal(greedy(model, ids, mask, n=32), expected)


@pytest.mark.parametrize("name", MODELS)
def test_left_padded_rows_generate_what_each_prompt_generates_alone(name):
    model = apply_sdtp(tiny_model(name), PRUNING)
    ids, mask = prompts()
    batch = greedy(model, ids, mask)
    alone = greedy(model, ids[1:, PAD:], mask[1:, PAD:])
    assert torch.equal(batch[1:, PROMPT:], alone[:, PROMPT - PAD:])
    assert torch.equal(batch[:1], greedy(model, ids[:1], mask[:1]))


@pytest.mark.parametrize("name", ["llama", "bloom"])
def test_sampling_and_beam_search_equal_the_masked_simulation(name):
    model = apply_sdtp(tiny_model(name), PRUNING)
    ids, mask = prompts()
    for kwargs in (dict(do_sample=True, top_k=20), dict(num_beams=3, do_sample=False)):
        torch.manual_seed(5)
        expected, _ = masked_generate(model, PRUNING, sdtp_predictors(model), ids, mask, max_new_tokens=8, **kwargs)
        torch.manual_seed(5)
        with torch.no_grad():
            got = model.generate(ids, attention_mask=mask, max_new_tokens=8, **kwargs)
        assert torch.equal(got, expected), kwargs


def test_row_operations_on_the_cache_move_each_rows_kept_tokens():
    """Beam search reorders the cache's rows between steps (reorder_cache), contrastive search selects and repeats
    them: each row's kept-token columns go with its keys. With the random scorer two equal prompts keep different
    tokens, so a swap shows."""
    model = apply_sdtp(tiny_model("llama"), PRUNING, scorer="random")
    ids = prompts(batch=1)[0].expand(2, -1)
    token = torch.tensor([[5], [5]])
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
        kept = key_positions(cache)
        assert not torch.equal(kept[0][0], kept[0][1])
        swapped, picked, repeated = (copy.deepcopy(cache) for _ in range(3))  # a copy's slots follow the copy's rows
        swapped.reorder_cache(torch.tensor([1, 0]))
        picked.batch_select_indices(torch.tensor([1]))
        repeated.batch_repeat_interleave(2)
        for cache_after, rows in ((swapped, [1, 0]), (picked, [1]), (repeated, [0, 0, 1, 1])):
            assert all(torch.equal(a, k[rows]) for a, k in zip(key_positions(cache_after), kept))
        # transformers 5.24 names the cache argument `cache`, 5.17 `past_key_values`
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        logits = model(token, **{name: cache}).logits[:, -1]
        torch.testing.assert_close(model(token, **{name: swapped}).logits[:, -1], logits[[1, 0]])
        torch.testing.assert_close(model(token[:1], **{name: picked}).logits[:, -1], logits[[1]])
    gone = weakref.ref(cache)
    gc.disable()  # no reference cycle: the cache's tensors go with its last reference
    try:
        del cache
        assert gone() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("name", ["llama", "bloom"])
def test_forward_without_cache_equals_the_masked_simulation(name):
    model = apply_sdtp(tiny_model(name), PRUNING)
    ids, mask = prompts()
    with torch.no_grad():
        pruned = model(ids, attention_mask=mask, use_cache=False)
    simulated, _ = masked_forward(model, PRUNING, sdtp_predictors(model), ids, mask, use_cache=False)
    torch.testing.assert_close(pruned.logits[:, -1], simulated.logits[:, -1], atol=1e-4, rtol=1e-4)


def test_two_models_in_one_process_stay_independent():
    patched, plain = tiny_model("llama"), tiny_model("llama")
    ids, mask = prompts()
    before = real_logits(plain, ids, mask)
    apply_sdtp(patched, PRUNING)
    torch.testing.assert_close(real_logits(plain, ids, mask), before, atol=0, rtol=0)
    with torch.no_grad():
        assert patched(ids, attention_mask=mask).logits.shape[1] < PROMPT


def test_save_and_apply_round_trip(tmp_path):
    model = spread_predictors(apply_sdtp(tiny_model("qwen3"), PRUNING))
    ids, mask = prompts()
    tokens = greedy(model, ids, mask)
    save_dir = tmp_path / "predictors"
    save_sdtp(model, save_dir)
    loaded = apply_sdtp(tiny_model("qwen3"), save_dir)
    for a, b in zip(sdtp_predictors(model).parameters(), sdtp_predictors(loaded).parameters()):
        assert torch.equal(a, b)
    assert torch.equal(greedy(loaded, ids, mask), tokens)


def test_loading_predictors_into_a_mismatched_model_raises(tmp_path):
    save_sdtp(apply_sdtp(tiny_model("llama"), PRUNING), tmp_path)
    with pytest.raises(ValueError, match="made for hidden size 64, but this LlamaForCausalLM has hidden size 32"):
        apply_sdtp(tiny_model("llama", hidden_size=32, num_attention_heads=2, num_key_value_heads=1), tmp_path)
    with pytest.raises(ValueError, match=r"holds 3 stage predictors, trained before layers \[2, 4, 6\], .* before "
                                         r"layers \[2, 4, 6, 8\]"):
        apply_sdtp(tiny_model("llama", num_hidden_layers=10), tmp_path)
    with pytest.raises(ValueError, match=r"holds predictors 16 wide, but the schedule asks for predictor_hidden = 8"):
        apply_sdtp(tiny_model("llama"), tmp_path, predictor_hidden=8)  # an override
    saved = json.loads((tmp_path / "sdtp_config.json").read_text())
    saved["config"]["predictor_hidden"] = 8
    (tmp_path / "sdtp_config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"sdtp_predictors.safetensors: tensor 'stage1.fc1.\w+' is torch.float32 of "
                                         r"shape \[16.*\(hidden size 64, predictor width 8\)"):
        apply_sdtp(tiny_model("llama"), tmp_path)  # a config that disagrees with its weights


def _without_position_embeddings(model):
    """A model whose decoder layers do not take the standard inputs (as a family with another interface)."""

    class OtherLayer(torch.nn.Module):
        def forward(self, hidden_states, attention_mask=None):
            return hidden_states

    model.model.layers = torch.nn.ModuleList(OtherLayer() for _ in model.model.layers)
    return model


@pytest.mark.parametrize("alibi", [True, False])
def test_falcon_is_refused(alibi):
    """Falcon adds its ALiBi bias into the attention mask that SDTP builds anew for pruned layers (the bias was lost
    there: a wrong answer), and with alibi off its layers rotate positions SDTP does not gather (a crash)."""
    from transformers import FalconConfig, FalconForCausalLM

    model = FalconForCausalLM(FalconConfig(**DECODER, alibi=alibi, new_decoder_architecture=False, multi_query=True))
    with pytest.raises(TypeError, match="does not support FalconForCausalLM.*adds the ALiBi bias into the attention"):
        apply_sdtp(model, PRUNING)


def test_layers_with_per_layer_inputs_are_refused():
    """Gemma 3n (and Gemma 4) layers take per-token inputs SDTP does not compact and share keys across layers."""
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(**DECODER, num_key_value_heads=2, head_dim=16, vocab_size_per_layer_input=128,
                               hidden_size_per_layer_input=8, num_kv_shared_layers=2, laurel_rank=4,
                               altup_num_inputs=2, activation_sparsity_pattern=[0.0] * 8)
    with pytest.raises(TypeError, match="does not support Gemma3nForCausalLM.*also take per_layer_input"):
        apply_sdtp(Gemma3nForCausalLM(config), PRUNING)


def test_router_logits_are_refused_in_a_prefill_that_prunes():
    """The MoE auxiliary loss applies one [B * N] padding mask to every layer's router logits; pruned layers have
    fewer rows. Refused by name (from the argument or the config), served where nothing is pruned."""
    ids, mask = prompts()
    model = apply_sdtp(tiny_model("mixtral"), PRUNING)
    with pytest.raises(ValueError, match="output_router_logits"), torch.no_grad():
        model(ids, attention_mask=mask, output_router_logits=True)
    model.config.output_router_logits = True
    with pytest.raises(ValueError, match="output_router_logits"), torch.no_grad():
        model(ids, attention_mask=mask)
    with torch.no_grad():
        model(ids, attention_mask=mask, output_router_logits=False)
        with sdtp_disabled(model):
            assert model(ids, attention_mask=mask).aux_loss is not None


def test_the_models_named_supported_are_the_tested_families():
    """SUPPORTED_MODELS (which the refusal below names) lists exactly the classes these tests run."""
    assert sorted(SUPPORTED_MODELS) == sorted(cls.__name__ for cls, _, _ in MODELS.values())


def test_unsupported_models_and_settings_raise_clear_errors():
    with pytest.raises(TypeError, match="does not support GPT2LMHeadModel; supported models: LlamaForCausalLM, "):
        apply_sdtp(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2)), PRUNING)
    with pytest.raises(ValueError, match=r"supports the layer types .* has \['chunked_attention'\]"):
        apply_sdtp(tiny_model("llama", layer_types=["full_attention"] * 7 + ["chunked_attention"]), PRUNING)
    with pytest.raises(TypeError, match="take no position_embeddings"):
        apply_sdtp(_without_position_embeddings(tiny_model("llama")), PRUNING)
    with pytest.raises(ValueError, match="beyond the model"):
        apply_sdtp(tiny_model("llama"), dataclasses.replace(PRUNING, start_layer=LAYERS))
    model = apply_sdtp(tiny_model("llama"), PRUNING)
    with pytest.raises(ValueError, match="already has SDTP"):
        apply_sdtp(model, PRUNING)
    ids, _ = prompts()
    with pytest.raises(ValueError, match="2D padding mask"), torch.no_grad():
        model(ids, attention_mask=torch.ones(2, 1, PROMPT, PROMPT))
    # A call that prunes nothing, over a cache without pruned layers, serves a 4D mask as the model does.
    causal = torch.ones(2, 1, PROMPT, PROMPT, dtype=torch.bool).tril()
    keep_all = apply_sdtp(tiny_model("llama"), PRUNING.replace(keep_ratio=1.0))
    with torch.no_grad():
        expected = tiny_model("llama")(ids, attention_mask=causal).logits
        assert torch.equal(keep_all(ids, attention_mask=causal).logits, expected)
        with sdtp_disabled(model):
            assert torch.equal(model(ids, attention_mask=causal).logits, expected)
        cache = output_cache(model(ids, use_cache=True))  # pruned: its layers need each row's padding mask
        with sdtp_disabled(model), pytest.raises(ValueError, match="2D padding mask"):
            model(ids[:, :1], attention_mask=torch.ones(2, 1, 1, PROMPT + 1, dtype=torch.bool), past_key_values=cache)
    with pytest.raises(NotImplementedError, match="needs a DynamicCache .*, got a StaticCache"):
        greedy(model, ids, None, cache_implementation="static")
    with sdtp_disabled(model):  # nothing pruned: a fixed-size cache serves
        assert torch.equal(greedy(model, ids, None, cache_implementation="static"), greedy(model, ids, None))
    with pytest.raises(ValueError, match="has no SDTP"):
        remove_sdtp(tiny_model("llama"))


def test_labels_under_pruning_raise_a_clear_error_and_work_unpruned():
    model = apply_sdtp(tiny_model("llama"), PRUNING)
    ids, mask = prompts()
    with pytest.raises(ValueError, match="labels= .* cannot be computed .* sdtp_disabled"), torch.no_grad():
        model(ids, attention_mask=mask, labels=ids)
    with sdtp_disabled(model), torch.no_grad():
        loss = model(ids, attention_mask=mask, labels=ids).loss
        assert torch.isfinite(loss)
    # A prefill that prunes nothing (keep_ratio = 1.0) has every position's logits.
    keep_all = apply_sdtp(tiny_model("llama"), PRUNING.replace(keep_ratio=1.0))
    with torch.no_grad():
        torch.testing.assert_close(keep_all(ids, attention_mask=mask, labels=ids).loss, loss)


def test_predictor_files_with_nan_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = apply_sdtp(tiny_model("llama"), PRUNING)
    save_sdtp(model, tmp_path)
    tensors = load_file(tmp_path / "sdtp_predictors.safetensors")
    tensors["stage2.fc1.weight"][0, 0] = float("nan")
    save_file(tensors, tmp_path / "sdtp_predictors.safetensors")
    with pytest.raises(ValueError, match=r"\['stage2.fc1.weight'\] hold NaN or infinite values"):
        apply_sdtp(tiny_model("llama"), tmp_path)
    with torch.no_grad():
        sdtp_predictors(model)[0].fc2.bias.fill_(float("inf"))
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        save_sdtp(model, tmp_path / "again")


def test_a_scorer_returning_the_wrong_shape_is_refused():
    """The ops after the scorer trust their indices (check=False, docs/ARCHITECTURE.md §3.4): a custom scorer's scores
    are checked against the tokens they rank before any is selected."""
    from sdtp_kernels.hf import Scorer, set_scorer

    class Extra(Scorer):
        name = "extra"

        def score(self, stage, hidden, predictor, valid):
            return torch.zeros(hidden.shape[0], hidden.shape[1] + 16)

    model = apply_sdtp(tiny_model("llama"), PRUNING)
    set_scorer(model, Extra())
    with pytest.raises(ValueError, match=r"scorer 'extra' returned scores of shape \(1, 56\) at stage 1; expected"):
        with torch.no_grad():
            model(torch.ones(1, 40, dtype=torch.long))


def test_unknown_scorer_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown scorer 'best'; known scorers: predictor, random, attention"):
        apply_sdtp(tiny_model("llama"), PRUNING, scorer="best")


@pytest.mark.parametrize("name", ["llama", "mistral"])  # Mistral: a 4096-token window, longer than the prompt
def test_decoding_without_padding_gives_pruned_layers_no_mask_as_the_dense_layers_get(name):
    """sdpa then runs the dense model's unmasked kernels; with padding every layer gets a mask
    (docs/ARCHITECTURE.md §4.5)."""
    model = apply_sdtp(tiny_model(name, "sdpa"), PRUNING)
    seen = []
    layer = model.model.layers[LAYERS - 1]  # pruned in every stage
    hook = layer.layer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True)
    try:
        for batch in (1, 2):
            seen.clear()
            ids, mask = prompts(batch)
            with torch.no_grad():
                model.generate(ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False)
            decode_masks = seen[1:]
            assert len(decode_masks) == 2
            if batch == 1:
                assert all(m is None for m in decode_masks)
            else:
                assert all(m is not None and m.shape[-1] > 1 for m in decode_masks)
    finally:
        hook.remove()
