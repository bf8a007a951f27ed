"""SDTP — Saliency-driven Dynamic Token Pruning for LLM prefill, as native kernels with Python bindings.

Importing the package loads nothing heavy: the ops, the predictor and the build information resolve on first
access, and the compiled extension loads with `sdtp_kernels.ops` (`sdtp_kernels.ops.load_library`)."""
import importlib

from .config import SDTPConfig
from .version import __version__

_LAZY = {
    "build_info": ".ops",
    "compact": ".ops",
    "compact_varlen": ".ops",
    "cuda_score_path": ".ops",
    "saliency_score": ".ops",
    "select_tokens": ".ops",
    "SaliencyPredictor": ".predictor",
}

__all__ = ["SDTPConfig", "__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
