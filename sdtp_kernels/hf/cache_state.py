"""What a pruned KV cache must remember between forwards: which tokens each layer group holds. Kept on the cache
object itself, so it lives and dies with the generation that filled it."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

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


def _layer(cache: Any, index: int) -> Any:
    layers = getattr(cache, "layers", None)
    return layers[index] if layers is not None and index < len(layers) else None


def cached_keys(cache: Any, index: int) -> int:
    """Keys that layer `index` of a DynamicCache holds before the forward in flight adds its own: every token it
    saw, or for a sliding-window layer only the last window - 1 (the attention then sees those plus the new ones)."""
    keys = getattr(_layer(cache, index), "keys", None)
    return 0 if not isinstance(keys, torch.Tensor) or keys.dim() < 2 else keys.shape[-2]


def seen_keys(cache: Any, index: int) -> int:
    """Keys that layer `index` of a DynamicCache was given so far: those it holds, or for a sliding-window layer,
    which drops the oldest, its `cumulative_length` (transformers 5.17 and 5.24)."""
    seen = getattr(_layer(cache, index), "cumulative_length", None)
    return cached_keys(cache, index) if seen is None else int(seen)


# The cache's methods that select, reorder or repeat its batch rows (beam search, contrastive search), and the same
# operation on a [B, keys] tensor of slots: a row's slots must follow its keys.
_ROW_OPERATIONS: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {
    "reorder_cache": lambda slots, beam_idx: slots.index_select(0, beam_idx.to(slots.device)),
    "batch_select_indices": lambda slots, indices: slots[indices],
    "batch_repeat_interleave": lambda slots, repeats: slots.repeat_interleave(repeats, 0),
}


class _RowsFollow:
    """`cache.<name>(argument)`, then the same operation on the rows of the cache's slots. It holds the cache weakly
    (a reference cycle would keep the cache's tensors until the collector runs) and a deep copy of the cache gets one
    of its own."""

    def __init__(self, cache: Any, name: str):
        self._cache, self._name = weakref.ref(cache), name

    def __call__(self, argument: Any) -> None:
        cache = self._cache()
        getattr(type(cache), self._name)(cache, argument)
        state = state_of(cache)
        if state is not None:
            state.key_slots = [_ROW_OPERATIONS[self._name](slots, argument) for slots in state.key_slots]

    def __deepcopy__(self, memo: dict) -> "_RowsFollow":
        cache = self._cache()
        return _RowsFollow(memo.get(id(cache), cache), self._name)  # the cache's copy, made before its attributes


def attach(cache: Any, state: PrunedCacheState) -> None:
    """Keep `state` on `cache`, and make the cache's row operations apply to its slots too."""
    setattr(cache, _ATTRIBUTE, state)
    for name in _ROW_OPERATIONS:
        if name not in vars(cache) and hasattr(type(cache), name):
            setattr(cache, name, _RowsFollow(cache, name))


def state_of(cache: Any) -> Optional[PrunedCacheState]:
    return getattr(cache, _ATTRIBUTE, None)


def key_positions(cache: Any) -> list[Optional[torch.Tensor]]:
    """For stage s = 1..S: [B, keys] the unpruned column of every key cached by that stage's layers (-1: empty
    slot), or None where that stage pruned nothing. Raises if the cache was not filled by an SDTP model."""
    state = state_of(cache)
    if state is None:
        raise ValueError("this cache was not filled by a model patched with apply_sdtp")
    return [None if g is None else state.key_slots[g] for g in state.group_of_stage[1:]]
