"""SDTP — Saliency-driven Dynamic Token Pruning for LLM prefill, as native kernels with Python bindings."""
import torch  # noqa: F401  (must be loaded before the extension)

from .build_info import build_info
from .config import SDTPConfig
from .ops import compact, compact_varlen, saliency_score, select_tokens
from .predictor import SaliencyPredictor
from .version import __version__

__all__ = [
    "SDTPConfig",
    "SaliencyPredictor",
    "__version__",
    "build_info",
    "compact",
    "compact_varlen",
    "saliency_score",
    "select_tokens",
]
