"""Which SDPA kernels the pruned layers prefer on CUDA (docs/ARCHITECTURE.md §4.6).

torch puts cuDNN attention first on Hopper and Blackwell (sm 9.0 / 10.x with cuDNN > 9.15). cuDNN builds an
execution graph for every new pair of query and key lengths, tens of milliseconds of host time each, and keeps it for
the life of the process. A dense model asks for one new key length per decode step; a pruned one for one per token
set, so once per stage. FlashAttention and memory-efficient attention have no per-shape set-up, so from its first
pruned layer on a forward puts them ahead of cuDNN, which stays enabled for what they cannot serve. Where, says the
environment variable SDTP_AVOID_CUDNN_SDPA:
  decode  (default) in decoding forwards, whose shapes are new at every step;
  always  in prefills too, where each stage adds one new shape per prompt length (cuDNN's kernels may repay that at
          long prompts, so prefills keep torch's choice by default);
  never   torch's choice everywhere.
The backend flags are process-wide (torch.nn.attention.sdpa_kernel): while a forward runs its pruned layers, another
thread's SDPA calls see the same order."""
from __future__ import annotations

import contextlib
import os
from typing import ContextManager, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

AVOID_CUDNN_ENV = "SDTP_AVOID_CUDNN_SDPA"
AVOID_CUDNN_WHEN = ("decode", "always", "never")


def avoid_cudnn_when() -> str:
    """SDTP_AVOID_CUDNN_SDPA, checked: decode (unset or empty), always or never."""
    value = os.environ.get(AVOID_CUDNN_ENV) or "decode"
    if value not in AVOID_CUDNN_WHEN:
        raise ValueError(f"SDTP: environment variable {AVOID_CUDNN_ENV} must be one of "
                         f"{', '.join(AVOID_CUDNN_WHEN)}, got {value!r}")
    return value


def cudnn_last_order() -> Optional[list[SDPBackend]]:
    """The enabled SDPA backends, FlashAttention and memory-efficient attention ahead of cuDNN; None when there is
    nothing to reorder (cuDNN disabled, or neither of the two enabled)."""
    cuda = torch.backends.cuda
    if not cuda.cudnn_sdp_enabled():
        return None
    ahead = [backend for backend, enabled in ((SDPBackend.FLASH_ATTENTION, cuda.flash_sdp_enabled()),
                                              (SDPBackend.EFFICIENT_ATTENTION, cuda.mem_efficient_sdp_enabled()))
             if enabled]
    if not ahead:
        return None
    return ahead + [SDPBackend.CUDNN_ATTENTION] + ([SDPBackend.MATH] if cuda.math_sdp_enabled() else [])


def pruned_layer_sdpa(device: torch.device, decoding: bool, attn_implementation: str) -> ContextManager:
    """What a forward enters at its first pruned layer and leaves when it ends. The layers before it have called
    SDPA already, so torch has set its own order (it does so at the process's first call) before this changes it."""
    when = avoid_cudnn_when()  # on every device, so that a wrong value shows wherever it is set
    if device.type != "cuda" or attn_implementation != "sdpa":
        return contextlib.nullcontext()
    if when == "never" or (when == "decode" and not decoding):
        return contextlib.nullcontext()
    order = cudnn_last_order()
    return contextlib.nullcontext() if order is None else sdpa_kernel(order, set_priority=True)
