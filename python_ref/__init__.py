"""Pure-PyTorch references of the sdtp ops and of the masked (simulated) SDTP forward: written for clarity, the
ground truth that every kernel and the physically pruned forward are tested against."""
from .compact import compact, compact_varlen
from .saliency_score import saliency_score
from .select_tokens import protected_mask, select_tokens

__all__ = ["compact", "compact_varlen", "protected_mask", "saliency_score", "select_tokens"]
