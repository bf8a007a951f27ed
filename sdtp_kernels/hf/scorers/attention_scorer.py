"""The training-free baseline (FastV style): stage s ranks its tokens by the head-averaged attention that each row's
last real token paid to them in decoder layer stage_layers[s - 1] - 1, the layer that ran just before the prune on the
same tokens. Needs eager attention, the only implementation that returns the attention probabilities."""
from __future__ import annotations

import functools
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
            # A partial, not a closure: a deep copy of the model then captures into the copy's scorer.
            self._hooks.append(attention.register_forward_hook(functools.partial(self._capture, stage)))
        self._hooks.append(model.register_forward_hook(self._forget, always_call=True))

    def _capture(self, stage: int, module: nn.Module, args: tuple, output) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError("the attention layer returned no attention probabilities (not eager attention?)")
        # Which query is a row's last real one is known only at the prune, one MLP later: the head mean of every
        # query's row is kept till then, [B, queries, keys] in float32 (at most the size of the map it comes from).
        self._captured[stage] = weights.mean(1, dtype=torch.float32)

    def _forget(self, module: nn.Module, args: tuple, output) -> None:
        """Maps no prune took (pruning off, a stage that removes nothing) go with the forward that made them."""
        self._captured.clear()

    def unbind(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._captured.clear()

    def score(self, stage: int, hidden: torch.Tensor, predictor: Optional[SaliencyPredictor],
              valid: Optional[torch.Tensor]) -> torch.Tensor:
        weights = self._captured.pop(stage, None)
        batch, tokens = hidden.shape[:2]
        if weights is None or weights.shape[0] != batch or weights.shape[-2:] != (tokens, tokens):
            raise RuntimeError(f"stage {stage}: no attention map over its {(batch, tokens)} tokens was captured")
        # Each row's last real query: a right-padded row ends in pads, a row that kept fewer in empty slots.
        last = torch.full((batch,), tokens - 1, device=weights.device)
        if valid is not None:
            last = last - valid.to(weights.device).flip(1).int().argmax(1)
        rows = torch.arange(batch, device=weights.device)
        return weights[rows, last]  # [B, keys]
