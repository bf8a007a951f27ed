"""Pure-PyTorch references of the sdtp ops, written for clarity: the ground truth that every kernel (and, through the
masked simulation, the physically pruned forward) is tested against. Imports nothing of sdtp_kernels."""
from .compact import compact, compact_varlen
from .saliency_score import saliency_score
from .select_tokens import protected_mask, select_tokens

__all__ = ["compact", "compact_varlen", "protected_mask", "saliency_score", "select_tokens"]
