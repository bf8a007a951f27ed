"""Pure-PyTorch references of the sdtp ops and of the masked (simulated) SDTP forward: written for clarity, the
ground truth that every kernel and the physically pruned forward are tested against."""
from .compact import compact, compact_varlen
from .masked_forward import MaskedPruning, keep_policy, masked_forward, masked_generate, sdtp_decide
from .saliency_score import saliency_score
from .select_tokens import protected_mask, select_tokens

__all__ = [
    "MaskedPruning",
    "compact",
    "compact_varlen",
    "keep_policy",
    "masked_forward",
    "masked_generate",
    "protected_mask",
    "saliency_score",
    "sdtp_decide",
    "select_tokens",
]
