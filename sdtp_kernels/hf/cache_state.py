"""What a pruned KV cache must remember between forwards: which tokens each layer group holds. Kept on the cache
object itself, so it lives and dies with the generation that filled it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

_ATTRIBUTE = "_sdtp_state"


@dataclass
class PrunedCacheState:
    key_slots: list[torch.Tensor]
    """One entry per distinct pruned token set: [B, keys], the column in the unpruned sequence of every key the
    layers of that group hold in their cache, in cache order; -1 for an empty slot (a row that kept fewer tokens)."""
    group_of_stage: list[Optional[int]]
    """Stage 0..S -> index into key_slots of the token set its layers hold; None where nothing was pruned yet."""
    uniform: list[bool]
    """One entry per key_slots entry: every row kept the same number of tokens (so it has no empty slot)."""

    @classmethod
    def unpruned(cls, num_stages: int) -> "PrunedCacheState":
        return cls([], [None] * (num_stages + 1), [])


def cached_keys(cache: Any, index: int) -> int:
    """Keys that layer `index` of a DynamicCache holds before the forward in flight adds its own: every token it
    saw, or for a sliding-window layer only the last window - 1 (the attention then sees those plus the new ones)."""
    layers = getattr(cache, "layers", None)
    keys = getattr(layers[index], "keys", None) if layers is not None and index < len(layers) else None
    return 0 if not isinstance(keys, torch.Tensor) or keys.dim() < 2 else keys.shape[-2]


def attach(cache: Any, state: PrunedCacheState) -> None:
    setattr(cache, _ATTRIBUTE, state)


def state_of(cache: Any) -> Optional[PrunedCacheState]:
    return getattr(cache, _ATTRIBUTE, None)


def key_positions(cache: Any) -> list[Optional[torch.Tensor]]:
    """For stage s = 1..S: [B, keys] the unpruned column of every key cached by that stage's layers (-1: empty
    slot), or None where that stage pruned nothing. Raises if the cache was not filled by an SDTP model."""
    state = state_of(cache)
    if state is None:
        raise ValueError("this cache was not filled by a model patched with apply_sdtp")
    return [None if g is None else state.key_slots[g] for g in state.group_of_stage[1:]]
