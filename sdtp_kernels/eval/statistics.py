"""Rank statistics of the evaluation: Spearman correlation with average ranks for ties, and means that tolerate
empty lists."""
from __future__ import annotations

from typing import Sequence

import torch


def rankdata(a: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties averaged (scipy.stats.rankdata's 'average')."""
    sorter = torch.argsort(a, stable=True)
    inverse = torch.empty_like(sorter)
    inverse[sorter] = torch.arange(len(a), device=a.device)
    ordered = a[sorter]
    new = torch.cat([torch.ones(1, dtype=torch.bool, device=a.device), ordered[1:] != ordered[:-1]])
    dense = new.cumsum(0)[inverse]
    bounds = torch.cat([new.nonzero().squeeze(1), torch.tensor([len(a)], device=a.device)])
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1).double()


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (NaN when either is constant, holds a NaN, or is shorter than
    2: a NaN has no rank, and the row is left out of the means, not ranked above everything)."""
    if x.numel() < 2 or bool(x.isnan().any()) or bool(y.isnan().any()):
        return float("nan")
    rx, ry = rankdata(x.double()), rankdata(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.norm() * ry.norm()).item()
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def mean(values: Sequence[float]) -> float:
    """The mean, NaN for no values."""
    return sum(values) / len(values) if values else float("nan")
