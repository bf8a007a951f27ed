"""Loading the frozen LLM that marking and training run."""
from __future__ import annotations

import torch
from torch import nn

from ..hf.families import family_of


def load_frozen_model(model_dir: str, dtype: str, device: torch.device) -> nn.Module:
    """A causal LM from a local directory (dtype: an `options.DTYPES` name), in eval mode, no parameter requiring
    a gradient."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    family_of(model)  # an unsupported architecture fails here, before any data is read
    return model.to(device).eval().requires_grad_(False)
