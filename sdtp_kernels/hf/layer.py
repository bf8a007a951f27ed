"""`SDTPDecoderLayer`: the drop-in wrapper that SDTP puts around every decoder layer from `start_layer` on."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..predictor import SaliencyPredictor


class SDTPDecoderLayer(nn.Module):
    """Runs the wrapped layer on the tokens it holds: before a stage layer (one with a predictor) a prefill is
    pruned; every wrapped layer gets the positions and attention mask of its stage's tokens."""

    def __init__(self, layer: nn.Module, index: int, stage: int, predictor: Optional[SaliencyPredictor],
                 window: Optional[int], runtime):
        super().__init__()
        self.layer = layer
        self.index = index  # in the model's decoder layers (and its KV cache)
        self.stage = stage
        self.predictor = predictor
        self.window = window  # sliding window of this layer's attention, None = full attention
        self.runtime = runtime  # shared by the model's wrappers; a plain object, not a submodule

    def forward(self, hidden_states: torch.Tensor, **kwargs):
        hidden_states, kwargs = self.runtime.layer_inputs(self, hidden_states, kwargs)
        return self.layer(hidden_states, **kwargs)

    def extra_repr(self) -> str:
        return f"stage={self.stage}" + ("" if self.window is None else f", window={self.window}")
