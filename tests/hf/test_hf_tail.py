"""protected_tail: the last m tokens of each row survive every stage and their logits come back, right-padded
batches included (what a harness log-likelihood needs); schedule overrides at apply time."""
import numpy as np
import pytest
import torch
from hf_tiny import PROMPT, PRUNING, VOCAB, prompts, spread_predictors, tiny_model
from masked_reference import reference_decide

from sdtp_kernels.hf import apply_sdtp, key_positions, protected_tail, save_sdtp, sdtp_config, sdtp_predictors
from sdtp_kernels.hf.masked import MaskedPruning
from sdtp_kernels.hf.model_call import output_cache


def _right_padded(batch: int = 3):
    ids = torch.randint(1, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, PROMPT - 9:] = 0  # row 1: 31 real tokens, then padding
    ids[1, PROMPT - 9:] = 0
    return ids, mask


@pytest.mark.parametrize("name, attn", [("llama", "eager"), ("llama", "sdpa"), ("qwen2", "sdpa"), ("bloom", "eager")])
def test_tail_logits_equal_the_masked_simulation_on_right_padded_rows(name, attn):
    model = spread_predictors(apply_sdtp(tiny_model(name, attn), PRUNING))
    ids, mask = _right_padded()
    lengths, tails = mask.sum(1).tolist(), [7, 12, 1]
    with protected_tail(model, tails), torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
    pruned, kept = out.logits, key_positions(output_cache(out))
    with MaskedPruning(model, PRUNING, reference_decide(PRUNING, sdtp_predictors(model), tails)) as sim, \
            torch.no_grad():
        simulated = model(ids, attention_mask=mask).logits
    width = pruned.shape[1]
    for row, (length, tail) in enumerate(zip(lengths, tails)):
        # The tail survives every stage, and the stages keep the schedule's counts raised to it.
        for stage, stage_kept in enumerate(kept, start=1):
            columns = set(stage_kept[row][stage_kept[row] >= 0].tolist())
            assert set(range(length - tail, length)) <= columns
            assert len(columns) == PRUNING.kept_count(length, stage, tail)
            assert torch.equal(sim.alive[stage][row].nonzero().squeeze(1), stage_kept[row][stage_kept[row] >= 0])
        torch.testing.assert_close(pruned[row, width - tail:], simulated[row, length - tail:length],
                                   atol=2e-5, rtol=1e-4)


def test_attention_scorer_ranks_a_right_padded_row_by_its_last_real_token():
    """Not by the attention of the pad in its last column: the row keeps at every stage what it keeps alone."""
    model = apply_sdtp(tiny_model("llama", "eager"), PRUNING, scorer="attention")
    ids, mask = _right_padded()
    real = int(mask[1].sum())
    with torch.no_grad():
        batch = key_positions(output_cache(model(ids, attention_mask=mask, use_cache=True)))
        alone = key_positions(output_cache(model(ids[1:, :real], use_cache=True)))
    for stage, (padded, single) in enumerate(zip(batch, alone), start=1):
        assert padded[1][padded[1] >= 0].tolist() == single[0].tolist(), stage


def test_tail_count_must_match_the_batch_and_be_non_negative():
    model = apply_sdtp(tiny_model("llama"), PRUNING)
    ids, mask = prompts(2)
    with pytest.raises(ValueError, match="protected_tail has 3 entries for a batch of 2 rows"), torch.no_grad():
        with protected_tail(model, [1, 2, 3]):
            model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="ints >= 0"):
        with protected_tail(model, [1, -2]):
            pass
    with torch.no_grad(), protected_tail(model, np.array([1, 2])):  # numpy ints, as lengths often come
        model(ids, attention_mask=mask)


def test_schedule_overrides_at_apply_time(tmp_path):
    save_sdtp(apply_sdtp(tiny_model("llama"), PRUNING), tmp_path)
    model = apply_sdtp(tiny_model("llama"), tmp_path, keep_ratio=0.5, num_sink=1)
    assert sdtp_config(model) == PRUNING.replace(keep_ratio=0.5, num_sink=1)
    with pytest.raises(ValueError, match=r"holds 3 stage predictors, .* before layers \[4, 6\]"):
        apply_sdtp(tiny_model("llama"), tmp_path, start_layer=4)
    with pytest.raises(ValueError, match=r"trained before layers \[2, 4, 6\], .* before layers \[3, 5, 7\]"):
        apply_sdtp(tiny_model("llama"), tmp_path, start_layer=3)  # as many stages, other layers
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['keep'\]"):
        apply_sdtp(tiny_model("llama"), tmp_path, keep=0.5)
