"""Marking (docs/ARCHITECTURE.md §5.1): gradient-times-input saliency of every token at the input x of each stage
layer, from the frozen model on the full (unpruned) sequence.

With T the LM loss of a row's labelled tokens, the raw saliency of token t is sum_d(dT/dx[t, d] * x[t, d]): the
first-order change of T when x[t] is scaled by (1 + eps), per unit eps. Removing the token changes T by about minus
that amount, so the stored *signed* saliency is oriented as an importance, higher = more worth keeping:
-sum_d(dT/dx * x), which is the same sum for the labelled tokens' log-likelihood. *Absolute* saliency is
|sum_d(dT/dx * x)|. Either is then normalised per row and stage (`SaliencyOptions.normalization`), with statistics
taken over the prompt tokens a predictor ranks (not the protected sink and local tokens, whose saliency is often far
larger and which are never pruned).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import SDTPConfig
from ..hf.families import family_of
from ..hf.patch import sdtp_disabled
from .data import Batch
from .losses import labelled_positions, lm_loss_rows
from .model import frozen_precision
from .options import SaliencyOptions
from .schedule import protected_tokens


def _normalize(saliency: torch.Tensor, ranked: torch.Tensor, normalization: str) -> torch.Tensor:
    """saliency [S, B, N]; statistics of each (stage, row) over `ranked` [B, N]."""
    if normalization == "none":
        return saliency
    count = ranked.sum(1, keepdim=True).clamp_min(1)

    def scaled(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # A row whose ranked tokens are all equal (or absent) has no scale: leave it unscaled, never divide by ~0.
        return values / torch.where(scale > 0, scale, torch.ones_like(scale))

    if normalization == "maxabs":
        return scaled(saliency, (saliency.abs() * ranked).amax(-1, keepdim=True))
    mean = (saliency * ranked).sum(-1, keepdim=True) / count
    std = (((saliency - mean) * ranked).pow(2).sum(-1, keepdim=True) / count).sqrt()
    return scaled(saliency - mean, std)


def token_saliency(
    model: nn.Module, config: SDTPConfig, batch: Batch, options: SaliencyOptions = SaliencyOptions()
) -> torch.Tensor:
    """[S, B, N] float32 saliency of every token at the input of each of the S stage layers (0 at padding). The
    model runs unpruned (also when SDTP is applied to it); its weights need no gradient."""
    layers = family_of(model).decoder_layers(model)
    stage_layers = config.stage_layers(len(layers))
    inputs: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == stage_layers[0]:
                # Differentiate from here on: every later stage input depends on this one, the layers below need no
                # backward pass.
                hidden = hidden.detach().requires_grad_()
                args, kwargs = ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            inputs[index] = hidden
            return args, kwargs

        return pre_hook

    positions, targets = labelled_positions(batch.labels)
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdtp_disabled(model))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(frozen_precision(model, batch.input_ids.device))
        for index in stage_layers:
            stack.enter_context(layers[index].register_forward_pre_hook(capture(index), with_kwargs=True))
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=positions, use_cache=False
        ).logits
        # Summed row losses: each row's gradient is that of its own loss.
        loss = lm_loss_rows(logits, targets).sum()
    grads = torch.autograd.grad(loss, [inputs[index] for index in stage_layers])
    # The products summed in float32: a half-precision model's sum over D would round away small saliencies.
    raw = torch.stack([(g.float() * inputs[i].detach().float()).sum(-1) for g, i in zip(grads, stage_layers)])
    saliency = raw.abs() if options.absolute else -raw
    real = batch.attention_mask.bool()
    ranked = batch.prompt_mask & ~protected_tokens(config, batch.prompt_mask, real)
    return _normalize(saliency, ranked, options.normalization) * real
