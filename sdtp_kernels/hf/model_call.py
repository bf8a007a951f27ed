"""Reading the inputs of a call to a transformers base model from a forward pre-hook, and the cache of its output."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import torch
from torch import nn

from .cache_state import state_of


def _is_dynamic(cache: Any) -> bool:
    from transformers.cache_utils import DynamicCache  # loaded by the model already; not at sdtp_kernels import

    return isinstance(cache, DynamicCache)


class ModelCall:
    """The padding mask and KV cache of a call to `base_model`, however they were passed: by position, by keyword,
    or as `past_key_values`, the name `cache` had before transformers 5.24 (still accepted through **kwargs).
    Inputs the pruned forward cannot serve are refused here, before the model runs."""

    def __init__(self, base_model: nn.Module):
        self._signature = inspect.signature(base_model.forward)
        self._catch_all = next(
            (p.name for p in self._signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )

    def arguments(self, args: tuple, kwargs: dict) -> Callable[[str], Any]:
        """A lookup of the call's arguments by name, wherever they were passed (None when absent)."""
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        extra = bound.get(self._catch_all, {})

        def argument(name: str) -> Any:
            return bound[name] if bound.get(name) is not None else extra.get(name)

        return argument

    @staticmethod
    def cache(argument: Callable[[str], Any]) -> Any:
        return argument("cache") if argument("cache") is not None else argument("past_key_values")

    def inputs(self, args: tuple, kwargs: dict, pruning: bool) -> tuple[Optional[torch.Tensor], Any]:
        """(attention_mask as a [batch, tokens] bool tensor or None, cache or None); `pruning`: this call may prune
        (SDTP is enabled with keep_ratio < 1)."""
        argument = self.arguments(args, kwargs)
        cache = self.cache(argument)
        if cache is not None and not _is_dynamic(cache):
            # Fixed-size caches give every layer the same length; a pruned layer's is shorter.
            if pruning:
                raise NotImplementedError(f"SDTP needs a DynamicCache (the default), got a {type(cache).__name__}; "
                                          "other caches (fixed-size, quantized, offloaded) serve inside "
                                          "`with sdtp_disabled(model):`")
            # Filled with pruning off, it holds no pruned layer: its forwards need no padding mask (generate gives a
            # StaticCache a 4D one).
            return None, cache
        mask = argument("attention_mask")
        if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            state = None if cache is None else state_of(cache)
            if not pruning and (state is None or not state.key_slots):
                # Nothing pruned, now or in the cache: the unpatched forward runs, and the model serves the mask it
                # was given (a 4D custom mask) itself.
                return None, cache
            shape = f" of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else ""
            raise ValueError(
                "SDTP needs attention_mask as the 2D padding mask [batch, tokens] (it builds each pruned layer's mask "
                f"itself), got a {type(mask).__name__}{shape}"
            )
        return (None if mask is None else mask.bool()), cache


def output_cache(output: Any) -> Any:
    """The KV cache of a model output: `cache` from transformers 5.24 on, `past_key_values` before (reading the old
    name on 5.24 warns)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
