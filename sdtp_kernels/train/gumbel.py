"""Hard Gumbel-softmax keep decisions (straight-through) from the predictors' 2-way logits."""
from __future__ import annotations

from typing import Optional

import torch

from ..predictor import SaliencyPredictor


def hard_gumbel_keep(logits: torch.Tensor, tau: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[...] float: 1 where the Gumbel-perturbed KEEP logit wins, else 0, with the gradient of the soft KEEP
    probability softmax((logits + g) / tau)[KEEP] (straight-through). logits [..., 2] as SaliencyPredictor.logits.
    Takes a generator, unlike F.gumbel_softmax, so that training draws reproducible noise."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    soft = ((logits + gumbels) / tau).softmax(-1)[..., SaliencyPredictor.KEEP]
    hard = (soft >= 0.5).to(soft.dtype)  # the argmax of two classes, ties to KEEP
    return hard - soft.detach() + soft


def next_alive(
    logits: torch.Tensor,
    alive: torch.Tensor,
    protected: torch.Tensor,
    tau: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """[B, N] float: the tokens alive after a stage. A token is kept if it was alive before (a dropped token stays
    dropped: the decisions multiply across stages) and it is protected or its sampled decision keeps it."""
    keep = torch.where(protected, torch.ones_like(alive, dtype=logits.dtype), hard_gumbel_keep(logits, tau, generator))
    return alive * keep
