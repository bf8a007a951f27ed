"""Loading the frozen LLM that marking and training run."""
from __future__ import annotations

import torch
from torch import nn

from ..hf.families import family_of
from ..hf.model_dir import load_causal_lm


def load_frozen_model(model_dir: str, dtype: str, device: torch.device) -> nn.Module:
    """A causal LM from a local directory (dtype: an `options.DTYPES` name), in eval mode, no parameter requiring
    a gradient."""
    model = load_causal_lm(model_dir, getattr(torch, dtype))
    family_of(model)  # an unsupported architecture fails here, before any data is read
    return model.to(device).eval().requires_grad_(False)
