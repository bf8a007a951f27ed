"""Loading the frozen LLM that marking and training run, and the precision its forward runs in."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from ..hf.families import family_of
from ..hf.layer import SDTPDecoderLayer
from ..hf.model_dir import load_causal_lm


def load_frozen_model(model_dir: str, dtype: str, device: torch.device, attention: Optional[str] = None) -> nn.Module:
    """A causal LM from a local directory (dtype: an `options.DTYPES` name; attention: "eager", "sdpa" or None for
    the model's default), in eval mode, no parameter requiring a gradient."""
    extra = {} if attention is None else {"attn_implementation": attention}
    model = load_causal_lm(model_dir, getattr(torch, dtype), **extra)
    family_of(model)  # an unsupported architecture fails here, before any data is read
    return model.to(device).eval().requires_grad_(False)


def frozen_precision(model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager:
    """Where the frozen model's forward runs: a half-precision model under autocast to its dtype, so that what
    reaches it in float32 (the policy masks, docs/ARCHITECTURE.md §5.2) is cast per op and what autocast keeps in
    float32 stays there; a float32 (or float64) model as it is. The predictors opt out (`full_precision`)."""
    if model.dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=model.dtype)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """The predictors' forward inside the frozen model's: float32 whatever autocast is on around it."""
    return torch.autocast(device.type, enabled=False)


def frozen_layers(model: nn.Module) -> list[nn.Module]:
    """The model's own decoder layers, inside SDTP's wrappers where it has them (a wrapper also holds a predictor,
    which training must neither shard nor checkpoint)."""
    return [layer.layer if isinstance(layer, SDTPDecoderLayer) else layer
            for layer in family_of(model).decoder_layers(model)]
