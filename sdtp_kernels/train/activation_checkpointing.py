"""Activation checkpointing of the frozen decoder layers (docs/ARCHITECTURE.md §5.2): each layer keeps only its
inputs for the backward pass and runs again there, so the activations held at once are one layer's, not every
layer's (eager attention's [B, heads, N, N] probabilities above all)."""
from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from .model import frozen_layers


def checkpoint_decoder_layers(model: nn.Module) -> None:
    """Run every decoder layer's forward under non-reentrant checkpointing. The hooks around it (the masked
    simulation's keep decisions and masks, on SDTP's wrapper; FSDP's all-gather, on the layer) stay outside the
    checkpoint: they run once, and the mask they build reaches the layer as an input, so its gradient flows back to
    the decisions. The recomputation in the backward pass finds the weights FSDP gathered for that pass."""
    for layer in frozen_layers(model):
        layer.forward = _checkpointed(layer.forward)


def _checkpointed(forward):
    @functools.wraps(forward)  # keeps the signature, which the model-family detection reads (docs/ARCHITECTURE.md §4.1)
    def checkpointed_forward(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return checkpointed_forward
