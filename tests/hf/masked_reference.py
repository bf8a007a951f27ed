"""The masked simulation of SDTP (sdtp_kernels.hf.masked) driven by the reference ops of python_ref: what the
physically pruned forward is checked against, with no native kernel on the simulation's side."""
import torch

from python_ref import saliency_score, select_tokens
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
