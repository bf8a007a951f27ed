"""What SDTP needs to know about a transformers decoder-only model, read from its structure rather than from a list
of class names: where the decoder layers are, under which keyword a layer receives the KV cache, how positions reach
attention (RoPE cos/sin, or an ALiBi bias), and which layers attend through a sliding window
(docs/ARCHITECTURE.md §4.1). What a family does inside its layers (QK-norm, soft-capping, fused QKV, MoE blocks,
per-layer-type rotary tables) needs nothing from SDTP: a layer gets its hidden states, positions and mask."""
from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import nn

from .. import ops

# Tested in tests/hf (tiny seeded configs; eager and SDPA where the family has both).
SUPPORTED_MODELS = (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "BloomForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "Olmo2ForCausalLM", "GraniteForCausalLM",
    "MixtralForCausalLM", "Qwen3MoeForCausalLM", "DeepseekV2ForCausalLM", "GptOssForCausalLM", "Cohere2ForCausalLM",
    "SmolLM3ForCausalLM", "Glm4ForCausalLM",
)
_LAYER_TYPES = ("full_attention", "sliding_attention")
_PER_LAYER_INPUTS = ("per_layer_input", "shared_kv_states")


def gather_rows(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """`ops.compact` for tensors that transformers shares across the batch (batch dim 1) or keeps on another device
    than the index (layers spread by accelerate): broadcast to the index's rows, then gather. Every index here is
    select_tokens' or made from it, in range by construction: no host read checks it (docs/ARCHITECTURE.md §3.4)."""
    if x.shape[0] != index.shape[0]:
        x = x.expand(index.shape[0], *x.shape[1:])
    return ops.compact(x, index.to(x.device), dim, check=False)


def _gather_table(table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """A rotary table [B or 1, N, ...] gathered at `slots`; a complex one through its real view (two floats each)."""
    if table.is_complex():
        return torch.view_as_complex(gather_rows(torch.view_as_real(table), slots))
    return gather_rows(table, slots)


class _Family:
    cache_kwargs: tuple[str, ...]

    def layer_cache(self, kwargs: dict[str, Any]) -> Any:
        """The KV cache a decoder layer received, under whichever keyword this family passes it; None without one."""
        return next((kwargs[k] for k in self.cache_kwargs if kwargs.get(k) is not None), None)


class RopeFamily(_Family):
    """Decoder layers at `model.model.layers` that get `position_embeddings` = (cos, sin) [B or 1, N, head_dim]
    (per layer type where a model has several rotary tables) and `position_ids`. Keys enter the cache already
    rotated, so only a pruned prefill needs its positions gathered."""

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
        table = kwargs.get("position_embeddings")
        if isinstance(table, torch.Tensor):  # one rotary table (DeepSeek-V2's complex freqs_cis)
            out["position_embeddings"] = _gather_table(table, query_slots)
        elif table is not None:  # (cos, sin)
            out["position_embeddings"] = tuple(_gather_table(t, query_slots) for t in table)
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = gather_rows(kwargs["position_ids"], query_slots)
        return out


class AlibiFamily(_Family):
    """Decoder layers at `model.transformer.h` that get `alibi` [B * heads, 1, keys] = slope * position of each key
    (BLOOM). A pruned layer's keys are a subset of the unpruned ones, so its bias is the unpruned bias gathered at the
    kept keys' columns."""

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


_ROPE, _ALIBI = RopeFamily(), AlibiFamily()


def _layers_at(model: nn.Module, *path: str) -> Optional[nn.ModuleList]:
    for name in path:
        model = getattr(model, name, None)
    return model if isinstance(model, nn.ModuleList) and len(model) > 0 else None


def _takes(layer: nn.Module, name: str) -> bool:
    return name in inspect.signature(layer.forward).parameters


def _unsupported(model: nn.Module, reason: str) -> TypeError:
    return TypeError(f"SDTP does not support {type(model).__name__}; supported models: {', '.join(SUPPORTED_MODELS)}, "
                     f"and decoder-only models whose layers take the same inputs ({reason})")


def family_of(model: nn.Module):
    """The family of a causal LM, from its structure; a model that does not fit raises what did not fit."""
    if getattr(model, "config", None) is None or getattr(model.config, "is_encoder_decoder", False):
        raise _unsupported(model, "it is not a decoder-only transformers model")
    rope_layers, alibi_layers = _layers_at(model, "model", "layers"), _layers_at(model, "transformer", "h")
    if rope_layers is not None:
        layer = rope_layers[0]  # never wrapped: start_layer >= 1
        shared = [name for name in _PER_LAYER_INPUTS if _takes(layer, name)]
        if shared:  # Gemma 3n, Gemma 4: per-token inputs SDTP does not compact, keys shared across layers
            raise _unsupported(model, f"its decoder layers ({type(layer).__name__}) also take {', '.join(shared)}")
        if _takes(layer, "position_embeddings"):
            return _ROPE
        raise _unsupported(model, f"its decoder layers ({type(layer).__name__}) take no position_embeddings")
    if alibi_layers is not None:
        layer = alibi_layers[0]
        if getattr(model.config, "alibi", None) is not None:  # Falcon
            raise _unsupported(model, "its base model adds the ALiBi bias into the attention mask that SDTP builds "
                                      "anew for pruned layers (or, with alibi off, rotates positions SDTP does not "
                                      "gather)")
        if _takes(layer, "alibi"):
            return _ALIBI
        raise _unsupported(model, f"its decoder layers ({type(layer).__name__}) take no alibi bias")
    raise _unsupported(model, "no decoder layers at model.layers or transformer.h")


def layer_windows(config: Any, num_layers: int) -> list[Optional[int]]:
    """Per decoder layer: the sliding window it attends through (a query at column q sees keys in (q - w, q]), or
    None for full attention. As transformers reads it: `layer_types` where the config has them, else
    `sliding_window` for every layer."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        return [window] * num_layers
    unknown = sorted(set(types) - set(_LAYER_TYPES))
    if unknown:
        raise ValueError(f"SDTP supports the layer types {_LAYER_TYPES}; this {config.model_type} model has {unknown}")
    return [window if kind == "sliding_attention" else None for kind in types]

