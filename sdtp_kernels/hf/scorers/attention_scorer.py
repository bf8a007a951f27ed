"""The training-free baseline (FastV style): stage s ranks its tokens by the head-averaged attention that the last
token paid to them in decoder layer stage_layers[s - 1] - 1, the layer that ran just before the prune on the same
tokens. Needs eager attention, the only implementation that returns the attention probabilities."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ...predictor import SaliencyPredictor
from .base import Scorer


def _attention_module(layer: nn.Module) -> nn.Module:
    """A decoder layer's attention: `self_attn` in most families, `self_attention` in BLOOM."""
    for name in ("self_attn", "self_attention"):
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"the attention scorer finds no attention module (self_attn or self_attention) in a "
                     f"{type(layer).__name__}")


class AttentionScorer(Scorer):
    name = "attention"

    def __init__(self):
        self._captured: dict[int, torch.Tensor] = {}
        self._hooks: list = []

    def bind(self, model: nn.Module, layers: Sequence[nn.Module], stage_layers: Sequence[int]) -> None:
        attn = model.config._attn_implementation
        if attn != "eager":
            raise ValueError(f"the attention scorer reads attention probabilities: load the model with "
                             f"attn_implementation='eager' (it runs {attn!r})")
        for stage, index in enumerate(stage_layers, start=1):  # start_layer >= 1: a layer precedes every stage
            attention = _attention_module(layers[index - 1])
            self._hooks.append(attention.register_forward_hook(self._capture(stage)))

    def _capture(self, stage: int):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("the attention layer returned no attention probabilities (not eager attention?)")
            self._captured[stage] = weights[:, :, -1, :].float().mean(1)  # [B, keys]: the last query row, head mean

        return hook

    def unbind(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._captured.clear()

    def score(self, stage: int, hidden: torch.Tensor, predictor: Optional[SaliencyPredictor]) -> torch.Tensor:
        weights = self._captured.pop(stage, None)
        if weights is None or weights.shape != hidden.shape[:2]:
            raise RuntimeError(
                f"stage {stage}: no attention map over its {tuple(hidden.shape[:2])} tokens was captured")
        return weights
