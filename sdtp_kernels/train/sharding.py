"""Sharding the frozen LLM across the processes of a torchrun job with PyTorch's FSDP (`fully_shard`,
docs/ARCHITECTURE.md §5.2): each process holds 1/world of the weights on its device and gathers one decoder layer's
at a time, in the forward and again in the backward pass. The model is loaded into host memory and sharded from
there: `fully_shard` moves one unit at a time to the device and keeps its shard, so no device ever holds the whole
model. The predictors are left out of the shards: they stay whole in every process and train data-parallel."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .model import frozen_layers


def loading_device(device: torch.device, shard: bool) -> torch.device:
    """Where the frozen model loads: `device`, or to be sharded, host memory (after refusing a run outside torchrun,
    before anything loads), which fully_shard then moves to `device` one unit at a time."""
    if not shard:
        return device
    _check_can_shard()
    return torch.device("cpu")


def _check_can_shard() -> None:
    if not dist.is_initialized():
        raise ValueError("sharding the model (--shard) needs several processes: run under torchrun "
                         "(torchrun --nproc-per-node N -m sdtp_kernels.cli ...)")


def shard_frozen_model(model: nn.Module, device: torch.device, predictors: Optional[nn.Module] = None) -> None:
    """Shard `model` (in host memory, or already on `device`) in place across the default process group onto
    `device`: one FSDP unit per decoder layer, one for the rest (embeddings, final norm, LM head). `predictors`, if
    the model carries them, are not sharded: they are moved to `device` whole."""
    _check_can_shard()
    from torch.distributed.fsdp import fully_shard

    for layer in frozen_layers(model):
        fully_shard(layer)
    fully_shard(model, ignored_params=set(predictors.parameters()) if predictors is not None else None)
    if predictors is not None:
        predictors.to(device)
