"""Attention masks of pruned layers, in the format of the attention implementation that consumes them."""
from __future__ import annotations

from typing import Optional

import torch

SUPPORTED_ATTENTION = ("eager", "sdpa")


def slot_mask(
    query_slots: torch.Tensor,
    key_slots: torch.Tensor,
    key_real: Optional[torch.Tensor] = None,
    window: Optional[int] = None,
) -> torch.Tensor:
    """[B, 1, Q, K] bool, True = attend. Slots are the tokens' columns in the unpruned sequence (-1 = an empty slot
    of a shorter row): a query sees the real keys at or before its own column (and, through a sliding window, after
    column q - window), and always itself, so that no row is empty (empty slots see only each other and are never
    read)."""
    q = query_slots[:, None, :, None]
    k = key_slots[:, None, None, :]
    allowed = (k >= 0) & (k <= q)
    if window is not None:
        allowed &= q - k < window
    if key_real is not None:
        allowed &= key_real[:, None, None, :]
    return allowed | (k == q)


def format_mask(allowed: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = attend) as transformers' mask functions give it: sdpa takes it as is, eager adds 0 or the
    dtype's minimum to the attention scores."""
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)
    raise NotImplementedError(
        f"SDTP supports the attention implementations {SUPPORTED_ATTENTION}, got {attn_implementation!r}"
    )
