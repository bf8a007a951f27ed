"""What SDTP needs to know about each supported transformers model family: where the decoder layers are, under
which keyword a layer receives the KV cache, and how positions reach attention (RoPE cos/sin or an ALiBi bias)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .. import ops


def gather_rows(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """`ops.compact` for tensors that transformers shares across the batch (batch dim 1) or keeps on another device
    than the index (layers spread by accelerate): broadcast to the index's rows, then gather."""
    if x.shape[0] != index.shape[0]:
        x = x.expand(index.shape[0], *x.shape[1:])
    return ops.compact(x, index.to(x.device), dim)


class RopeFamily:
    """Llama, Mistral, Qwen2, Qwen3: every layer gets `position_embeddings` = (cos, sin) [B or 1, N, head_dim] and
    `position_ids`. Keys enter the cache already rotated, so only a pruned prefill needs its positions gathered."""

    cache_kwargs = ("cache", "past_key_values")  # transformers >= 5.24 / 5.17

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def base_model(self, model: nn.Module) -> nn.Module:
        return model.model

    def position_kwargs(
        self, kwargs: dict[str, Any], query_slots: Optional[torch.Tensor], key_slots: torch.Tensor
    ) -> dict[str, Any]:
        if query_slots is None:  # decode: the new tokens' positions are already right
            return {}
        out = {}
        if kwargs.get("position_embeddings") is not None:
            out["position_embeddings"] = tuple(gather_rows(t, query_slots) for t in kwargs["position_embeddings"])
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = gather_rows(kwargs["position_ids"], query_slots)
        return out


class AlibiFamily:
    """BLOOM: every layer gets `alibi` [B * heads, 1, keys] = slope * position of each key. A pruned layer's keys
    are a subset of the unpruned ones, so its bias is the unpruned bias gathered at the kept keys' columns."""

    cache_kwargs = ("layer_past",)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.transformer.h

    def base_model(self, model: nn.Module) -> nn.Module:
        return model.transformer

    def position_kwargs(
        self, kwargs: dict[str, Any], query_slots: Optional[torch.Tensor], key_slots: torch.Tensor
    ) -> dict[str, Any]:
        alibi = kwargs["alibi"]
        batch = key_slots.shape[0]
        per_head = alibi.view(batch, -1, alibi.shape[-1])
        return {"alibi": gather_rows(per_head, key_slots, dim=2).view(alibi.shape[0], 1, -1)}


_FAMILIES = {
    "LlamaForCausalLM": RopeFamily(),
    "MistralForCausalLM": RopeFamily(),
    "Qwen2ForCausalLM": RopeFamily(),
    "Qwen3ForCausalLM": RopeFamily(),
    "BloomForCausalLM": AlibiFamily(),
}
SUPPORTED_MODELS = tuple(_FAMILIES)


def family_of(model: nn.Module):
    # Imported here, not with this module: transformers' model code takes seconds to load, and only a model that
    # is being patched needs it (each class loads on first access).
    import transformers

    for name, family in _FAMILIES.items():
        if isinstance(model, getattr(transformers, name)):
            return family
    raise TypeError(
        f"SDTP does not support {type(model).__name__}; supported models: {', '.join(SUPPORTED_MODELS)}"
    )


def check_model_config(config: Any) -> None:
    """Configurations the pruned forward cannot represent yet."""
    if getattr(config, "sliding_window", None) is not None:
        raise ValueError(
            f"SDTP supports full-attention layers only, but this {config.model_type} model uses a sliding window of "
            f"{config.sliding_window} tokens (set config.sliding_window = None, or use_sliding_window = False for Qwen)"
        )
