"""The masked simulation of the SDTP forward (DynamicViT style): nothing is removed. Every token keeps its row;
a token dropped at stage s is hidden as a key from every layer of stage s on by the attention mask, so the tokens
that are kept compute exactly what the physically pruned forward computes for them.

Two pieces, usable apart:
- `keep_policy` composes "which keys each query may attend" from the keep decisions and causality;
- `MaskedPruning` installs that mask on a transformers model, layer by layer, around any forward or `generate()`,
  asking a `decide` function at each stage layer which tokens stay. `select_decide` is SDTP's rule (scores,
  protected tokens, select_tokens); training passes its own (Gumbel-softmax decisions), and the tests check the
  physically pruned forward against this simulation with the reference ops (docs/ARCHITECTURE.md §4.4).
"""
from __future__ import annotations

import bisect
import contextlib
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..config import SDTPConfig
from .cache_state import cached_keys
from .families import family_of, layer_windows
from .masks import format_mask
from .model_call import ModelCall
from .patch import sdtp_disabled

# decide(stage, hidden [B, N, D], alive [B, N], valid [B, N] bool) -> the tokens alive after this stage [B, N]
Decide = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# score(stage, hidden [B, N, D]) -> [B, N] float scores, higher = keep
StageScore = Callable[[int, torch.Tensor], torch.Tensor]


def keep_policy(key_keep: torch.Tensor, num_queries: int, window: Optional[int] = None) -> torch.Tensor:
    """[B, 1, Q, K]: may query i (the last Q of the K positions) attend key j? Yes iff j <= i (and i - j < window
    through a sliding window) and j is kept — or j is i itself, so that no row is empty. `key_keep` [B, K] is bool,
    or float in [0, 1]: the result is then a product of it (1 where attended), so straight-through Gumbel decisions
    keep their gradient."""
    B, K = key_keep.shape
    q, k = _positions(K, num_queries, key_keep.device)
    causal, itself = structural_mask(K, num_queries, window, key_keep.device), k == q
    keep = key_keep[:, None, None, :]
    if keep.dtype == torch.bool:
        return causal & (keep | itself)
    return causal * (keep + (1 - keep) * itself)


def structural_mask(num_keys: int, num_queries: int, window: Optional[int], device: torch.device) -> torch.Tensor:
    """[Q, K] bool: what the last Q of K positions may attend whatever is kept: causality, and a sliding window."""
    q, k = _positions(num_keys, num_queries, device)
    allowed = k <= q
    return allowed if window is None else allowed & (q - k < window)


def _positions(num_keys: int, num_queries: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """([Q, 1] query positions, the last Q of K; [1, K] key positions)."""
    queries = torch.arange(num_keys - num_queries, num_keys, device=device)
    return queries[:, None], torch.arange(num_keys, device=device)[None, :]


def hard_mask(policy: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A 0/1 policy as the attention implementation's mask."""
    return format_mask(policy.bool() if policy.dtype == torch.bool else policy > 0.5, attn_implementation, dtype)


def select_decide(config: SDTPConfig, score: StageScore, select: Callable = ops.select_tokens,
                  tails: Optional[Sequence[int]] = None) -> Decide:
    """SDTP's rule: at stage s keep config.kept_count(L, s) of each row's L real tokens, the protected ones and the
    best of the others by `score`. `select` has the contract of `ops.select_tokens` (the tests pass the reference);
    `tails`: per row, last tokens kept on top (as `protected_tail` keeps them)."""

    def decide(stage, hidden, alive, valid):
        lengths = valid.sum(1).tolist()
        row_tails = tails if tails is not None else [0] * len(lengths)
        keep = torch.tensor([config.kept_count(n, stage, t) for n, t in zip(lengths, row_tails)])
        local = torch.tensor([config.local_count(n, t) for n, t in zip(lengths, row_tails)])
        index, _ = select(score(stage, hidden), keep, alive, config.num_sink, local)
        # Empty slots (-1) write into an extra column that is dropped.
        kept = torch.zeros(alive.shape[0], alive.shape[1] + 1, dtype=torch.bool, device=alive.device)
        kept.scatter_(1, torch.where(index >= 0, index, alive.shape[1]), True)
        return kept[:, :-1]

    return decide


class MaskedPruning:
    """Context manager: inside it, the model's forwards run the masked simulation. A forward with an empty cache is
    a prompt (N tokens): its stage layers call `decide`, and `alive[s]` records the prompt tokens alive from stage s
    on (alive[0] = the real tokens, from the forward's attention_mask). Later forwards (decoding) see the prompt keys
    alive at their layer's stage plus every generated token.

    `to_mask(policy, dtype, window)` turns `keep_policy` output into the layer's attention_mask; by default the hard
    mask of the model's attention implementation. Sliding-window layers apply their window, over the keys their
    cache returns. A model patched with apply_sdtp runs with its pruning off meanwhile."""

    def __init__(
        self,
        model: nn.Module,
        config: SDTPConfig,
        decide: Decide,
        to_mask: Optional[Callable[[torch.Tensor, torch.dtype, Optional[int]], torch.Tensor]] = None,
    ):
        self.model, self.config, self.decide = model, config, decide
        attn = model.config._attn_implementation
        self.to_mask = to_mask or (lambda policy, dtype, window: hard_mask(policy, attn, dtype))
        self.family = family_of(model)
        self.windows = layer_windows(model.config, len(self.family.decoder_layers(model)))
        self.alive: list[torch.Tensor] = []
        self._padding_mask: Optional[torch.Tensor] = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "MaskedPruning":
        self._stack.enter_context(sdtp_disabled(self.model))
        base = self.family.base_model(self.model)
        call = ModelCall(base)

        def remember_padding(module, args, kwargs):
            self._padding_mask = call.inputs(args, kwargs, pruning=True)[0]  # it reads the cache as SDTP does

        self._stack.enter_context(base.register_forward_pre_hook(remember_padding, with_kwargs=True))
        layers = self.family.decoder_layers(self.model)
        stage_layers = self.config.stage_layers(len(layers))
        for index in range(self.config.start_layer, len(layers)):
            hook = self._hook(index, bisect.bisect_right(stage_layers, index), index in stage_layers)
            self._stack.enter_context(layers[index].register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _real_tokens(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        if self._padding_mask is None:
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        return self._padding_mask.to(device)

    def _past_length(self, index: int, kwargs: dict) -> int:
        cache = self.family.layer_cache(kwargs)
        return 0 if cache is None else cache.get_seq_length(index)

    def _hook(self, index: int, stage: int, is_stage_layer: bool):
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            batch, length = hidden.shape[:2]
            past = self._past_length(index, kwargs)
            if past == 0 and is_stage_layer:  # the prompt reaches a stage: decide who stays
                if stage == 1:
                    self.alive = [self._real_tokens(batch, length, hidden.device)]
                del self.alive[stage:]
                self.alive.append(self.decide(stage, hidden, self.alive[stage - 1], self.alive[0]))
            prompt = self.alive[stage]
            generated = torch.ones(batch, past + length - prompt.shape[1], dtype=prompt.dtype, device=prompt.device)
            keys = torch.cat([prompt, generated], 1)
            cache = self.family.layer_cache(kwargs)
            if cache is not None:  # the keys its cache returns: a sliding-window layer keeps its last window - 1
                keys = keys[:, -(cached_keys(cache, index) + length):]
            policy = keep_policy(keys, length, self.windows[index])
            kwargs["attention_mask"] = self.to_mask(policy, hidden.dtype, self.windows[index])
            return args, kwargs

        return pre_hook
