"""The masked simulation of SDTP (sdtp_kernels.hf.masked) driven by the reference ops of python_ref: what the
physically pruned forward is checked against, with no native kernel on the simulation's side."""
import torch

from python_ref import saliency_score, select_tokens
from sdtp_kernels.hf import key_positions
from sdtp_kernels.hf.masked import MaskedPruning, select_decide


def reference_decide(config, predictors, tails=None):
    """SDTP's rule with the reference ops: the predictors' scores, python_ref's select_tokens."""
    def score(stage, hidden):
        return saliency_score(hidden, *predictors[stage - 1].score_params())

    return select_decide(config, score, select=select_tokens, tails=tails)


@torch.no_grad()
def masked_forward(model, config, predictors, input_ids, attention_mask=None, **kwargs):
    """One forward of the prompt under the masked simulation. Returns (model output, alive per stage)."""
    with MaskedPruning(model, config, reference_decide(config, predictors)) as sim:
        output = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return output, sim.alive


@torch.no_grad()
def masked_generate(model, config, predictors, input_ids, attention_mask=None, **kwargs):
    """`model.generate` under the masked simulation. Returns (generate's output, alive per stage)."""
    with MaskedPruning(model, config, reference_decide(config, predictors)) as sim:
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return output, sim.alive


def assert_kept_as_simulated(cache, alive):
    """The token sets of a pruned cache (key_positions) are the simulation's alive prompt tokens, stage by stage; a
    stage that pruned nothing (None) kept every real token."""
    for stage, kept in enumerate(key_positions(cache), start=1):
        for row, expected in enumerate(alive[stage]):
            if kept is None:
                assert torch.equal(expected, alive[0][row]), f"stage {stage} pruned nothing, the simulation did"
            else:
                got = kept[row][kept[row] >= 0]
                assert torch.equal(got, expected.nonzero().squeeze(1)), f"stage {stage}, row {row} kept other tokens"
