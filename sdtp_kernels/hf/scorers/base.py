"""The scorer seam: what ranks a stage's tokens. The pruned forward owns everything else (kept counts, protected
tokens, selection, compaction), so scorers differ only in the scores they return (docs/ARCHITECTURE.md §4.3)."""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
from torch import nn

from ...predictor import SaliencyPredictor


class Scorer:
    """Turns the hidden states entering a stage layer into one float32 score per token, higher = keep.

    `bind` is called when the scorer is put on a patched model (with its decoder layers, unwrapped, and the stage
    layer indices) and may install hooks; `unbind` removes them. A scorer serves one model at a time."""

    name: ClassVar[str]

    def bind(self, model: nn.Module, layers: Sequence[nn.Module], stage_layers: Sequence[int]) -> None:
        pass

    def unbind(self) -> None:
        pass

    def score(self, stage: int, hidden: torch.Tensor, predictor: Optional[SaliencyPredictor],
              valid: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, N] float32 scores of the tokens of `hidden` [B, N, D] at stage `stage` (1-based); `predictor` is that
        stage's trained predictor; `valid` [B, N] bool marks the real tokens (False: padding, or an empty slot of a
        row that kept fewer), None when all are real. Invalid tokens are never kept, whatever their score."""
        raise NotImplementedError
