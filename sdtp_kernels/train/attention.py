"""The attention mask that carries the keep decisions' gradient (DynamicViT's `softmax_with_policy`)."""
from __future__ import annotations

from typing import Optional

import torch

from ..hf.masked import structural_mask

POLICY_EPS = 1e-6
"""Weight, relative to a kept key, that a dropped key keeps in the softmax (DynamicViT's eps): it makes the
gradient with respect to a dropped key's decision finite and non-zero."""


def policy_attention_mask(policy: torch.Tensor, real: torch.Tensor, dtype: torch.dtype,
                          window: Optional[int] = None) -> torch.Tensor:
    """Additive mask [B, 1, Q, K] from `keep_policy`'s float policy (1 = attend, 0 = dropped key).

    softmax(a + log(p + eps)) is DynamicViT's exp(a) * p / sum(exp(a) * p) up to eps, so the decisions p get the
    same gradient. Causality, a sliding window and padding (`real` [B, K]) are not decisions: there the mask is the
    dtype's minimum, exactly as transformers masks them. Works for eager and sdpa attention, which both add a float
    mask."""
    num_queries, num_keys = policy.shape[-2:]
    q = torch.arange(num_keys - num_queries, num_keys, device=policy.device)[:, None]
    k = torch.arange(num_keys, device=policy.device)[None, :]
    causal = structural_mask(num_keys, num_queries, window, policy.device)
    structural = causal & (real.bool()[:, None, None, :] | (k == q))
    # log(eps) in at least float32: a half-precision policy would round 1 + eps to 1.
    soft = torch.log(policy.to(torch.promote_types(dtype, torch.float32)) + POLICY_EPS)
    return torch.where(structural, soft, torch.finfo(dtype).min).to(dtype)
