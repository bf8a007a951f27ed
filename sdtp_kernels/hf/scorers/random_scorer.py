"""Blind pruning: uniform random scores from a seeded generator, restarted each time the scorer is bound, so that a
run is reproducible whatever ran before it."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ...devices import to_device
from ...predictor import SaliencyPredictor
from .base import Scorer


class RandomScorer(Scorer):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def bind(self, model: nn.Module, layers: Sequence[nn.Module], stage_layers: Sequence[int]) -> None:
        self._generator.manual_seed(self.seed)

    def score(self, stage: int, hidden: torch.Tensor, predictor: Optional[SaliencyPredictor],
              valid: Optional[torch.Tensor]) -> torch.Tensor:
        # Drawn on the CPU: the same scores on every device.
        return to_device(torch.rand(hidden.shape[:2], generator=self._generator), hidden.device)
