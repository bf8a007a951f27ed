"""SDTP for Hugging Face transformers causal LMs: patch a model instance, prune its prefill, generate as usual."""
from .cache_state import key_positions
from .families import SUPPORTED_MODELS
from .patch import (
    apply_sdtp,
    prefill_prunes,
    protected_tail,
    remove_sdtp,
    save_sdtp,
    sdtp_config,
    sdtp_disabled,
    sdtp_predictors,
    set_scorer,
)
from .scorers import SCORERS, Scorer, make_scorer

__all__ = [
    "SCORERS",
    "SUPPORTED_MODELS",
    "Scorer",
    "apply_sdtp",
    "key_positions",
    "prefill_prunes",
    "remove_sdtp",
    "save_sdtp",
    "sdtp_config",
    "sdtp_disabled",
    "sdtp_predictors",
    "set_scorer",
    "make_scorer",
    "protected_tail",
]
