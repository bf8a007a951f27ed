"""SDTP's own scorer: each stage's trained predictor, through the fused `saliency_score` op."""
from __future__ import annotations

from typing import Optional

import torch

from ...predictor import SaliencyPredictor
from .base import Scorer


class PredictorScorer(Scorer):
    name = "predictor"

    def score(self, stage: int, hidden: torch.Tensor, predictor: Optional[SaliencyPredictor],
              valid: Optional[torch.Tensor]) -> torch.Tensor:
        return predictor.score(hidden)
