"""Scorers that rank a stage's tokens, selectable by name: `predictor` (SDTP's trained predictors, the default),
`random` (blind pruning) and `attention` (the last token's attention, training-free). Each is one file; they share
the `Scorer` protocol of `base`."""
from __future__ import annotations

from typing import Union

from .attention_scorer import AttentionScorer
from .base import Scorer
from .predictor_scorer import PredictorScorer
from .random_scorer import RandomScorer

SCORERS = {cls.name: cls for cls in (PredictorScorer, RandomScorer, AttentionScorer)}


def make_scorer(scorer: Union[str, Scorer], **options) -> Scorer:
    """A scorer by name (with its options, e.g. seed=1 for random), or the given instance."""
    if isinstance(scorer, Scorer):
        if options:
            raise ValueError(f"options {sorted(options)} are for a scorer named by string, not an instance")
        return scorer
    if not isinstance(scorer, str):  # a scorer of one's own subclasses Scorer: its bind/unbind defaults are relied on
        raise TypeError(f"scorer must be a name ({', '.join(SCORERS)}) or an instance of a subclass of "
                        f"sdtp_kernels.hf.Scorer, got a {type(scorer).__name__}")
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; known scorers: {', '.join(SCORERS)}")
    return SCORERS[scorer](**options)


__all__ = ["SCORERS", "AttentionScorer", "PredictorScorer", "RandomScorer", "Scorer", "make_scorer"]
