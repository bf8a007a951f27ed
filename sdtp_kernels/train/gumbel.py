"""Hard Gumbel-softmax keep decisions (straight-through) from the predictors' 2-way logits."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..predictor import SaliencyPredictor


def gumbel_noise(logits: torch.Tensor, real: torch.Tensor,
                 generators: Optional[Sequence[Optional[torch.Generator]]] = None) -> torch.Tensor:
    """Standard Gumbel noise shaped like `logits` [B, N, 2]. Row b's comes from generators[b] (None: the global
    generator), drawn over its real tokens (`real` [B, N] bool) only, so that a row's noise does not depend on the
    rows it is batched with or how far they pad it (docs/ARCHITECTURE.md §5.2); 0 at padding."""
    noise = torch.zeros_like(logits)
    for row in range(logits.shape[0]):
        generator = generators[row] if generators is not None else None
        draw = torch.empty(int(real[row].sum()), logits.shape[-1], dtype=logits.dtype, device=logits.device)
        noise[row, real[row]] = -draw.exponential_(generator=generator).log()
    return noise


def hard_gumbel_keep(logits: torch.Tensor, tau: float, noise: torch.Tensor) -> torch.Tensor:
    """[...] float: 1 where the noise-perturbed KEEP logit wins, else 0, with the gradient of the soft KEEP
    probability softmax((logits + noise) / tau)[KEEP] (straight-through). logits [..., 2] as SaliencyPredictor.logits,
    noise from `gumbel_noise` (F.gumbel_softmax draws its own, not reproducibly)."""
    soft = ((logits + noise) / tau).softmax(-1)[..., SaliencyPredictor.KEEP]
    hard = (soft >= 0.5).to(soft.dtype)  # the argmax of two classes, ties to KEEP
    return hard - soft.detach() + soft


def next_alive(
    logits: torch.Tensor,
    alive: torch.Tensor,
    protected: torch.Tensor,
    tau: float,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[B, N] float: the tokens alive after a stage. A token is kept if it was alive before (a dropped token stays
    dropped: the decisions multiply across stages) and it is protected or its sampled decision keeps it (noise None:
    drawn from the global generator)."""
    if noise is None:
        noise = gumbel_noise(logits, torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device))
    keep = torch.where(protected, torch.ones_like(alive, dtype=logits.dtype), hard_gumbel_keep(logits, tau, noise))
    return alive * keep
