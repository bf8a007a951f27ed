"""The learning-rate schedule of predictor training and of the reference model: linear warm-up, then cosine decay
to `min_ratio` of the peak at `max_steps` (or constant)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float = 0.0,
                  constant: bool = False) -> float:
    """The factor of the peak learning rate at 0-based `step`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if constant:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
