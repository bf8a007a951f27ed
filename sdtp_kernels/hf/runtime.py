"""The pruned forward. `SDTPRuntime` belongs to one patched model; each call of its base model gets a `_Forward`
that the wrapped decoder layers share: at a stage layer of a prefill it scores (through the runtime's scorer),
selects and compacts the hidden states, and it hands every pruned layer the positions and attention mask of the
tokens that layer holds (docs/ARCHITECTURE.md §4)."""
from __future__ import annotations

import contextlib
import gc
import threading
import weakref
from typing import Any, Optional

import torch
from torch import nn

from .. import ops
from ..config import SDTPConfig
from ..devices import to_device
from ..predictor import SaliencyPredictor
from .attention_backends import pruned_layer_sdpa
from .cache_state import PrunedCacheState, attach, cached_keys, seen_keys, state_of
from .families import gather_rows
from .masks import format_mask, slot_mask
from .model_call import ModelCall
from .scorers import Scorer


class _Plan:
    """The host-side schedule of one prefill, from its rows' prompt lengths."""

    def __init__(self, config: SDTPConfig, lengths: list[int], tails: list[int], num_stages: int):
        self.counts = [lengths] + [[config.kept_count(n, s, t) for n, t in zip(lengths, tails)]
                                   for s in range(1, num_stages + 1)]
        self.local = [config.local_count(n, t) for n, t in zip(lengths, tails)]
        # A stage that removes nothing from any row is skipped, so keep_ratio = 1.0 runs the unpatched forward.
        self.active = [False] + [
            any(c < p for c, p in zip(self.counts[s], self.counts[s - 1])) for s in range(1, num_stages + 1)
        ]
        self._rows: Optional[torch.Tensor] = None

    def row_counts(self, device: torch.device) -> torch.Tensor:
        """[S + 2, B] on `device`: the kept counts of stages 0..S, then the local counts; copied once per prefill,
        without synchronising the stream."""
        if self._rows is None or self._rows.device != device:
            self._rows = to_device(torch.tensor(self.counts + [self.local], dtype=torch.int64), device)
        return self._rows


class _Forward:
    """One call of the base model: its padding mask, and the tensors its pruned layers share."""

    def __init__(self, runtime: "SDTPRuntime", padding_mask: Optional[torch.Tensor], past_length: int,
                 positional: Optional[str]):
        self.runtime = runtime
        self.padding_mask = padding_mask
        self.past_length = past_length
        self.positional = positional  # an argument of the call that a pruning prefill refuses (_POSITIONAL)
        # A pruning prefill's one host read, the rows' prompt lengths, is taken here, before the model queues any
        # work of this forward: taken at the first stage, it would wait for the layers before it.
        self.real_lengths: Optional[list[int]] = None
        if past_length == 0 and runtime.enabled and padding_mask is not None:
            self.real_lengths = padding_mask.sum(1).tolist()
        self.state: Optional[PrunedCacheState] = None
        self.plan: Optional[_Plan] = None  # set for a prefill with pruning on, the only forward that prunes
        self.query_slots: Optional[torch.Tensor] = None  # decode: the new tokens' columns
        self.columns = 0  # every column so far: the cached ones and this forward's
        self.group_inputs: dict[tuple, dict[str, Any]] = {}  # (group, window, visible keys) -> layer inputs
        self.pruned_sdpa: Optional[contextlib.ExitStack] = None  # entered at the first pruned layer, left in close()

    def layer_inputs(self, layer, hidden: torch.Tensor, kwargs: dict):
        """The hidden states and keyword arguments that SDTPDecoderLayer `layer` runs its layer on."""
        if self.state is None:
            self._start(hidden, kwargs)
        if self.plan is not None and layer.predictor is not None:
            hidden = self._prune(layer.stage, layer.predictor, hidden)
        group = self.state.group_of_stage[layer.stage]
        if group is None:
            return hidden, kwargs
        if self.pruned_sdpa is None:
            self.pruned_sdpa = contextlib.ExitStack()
            self.pruned_sdpa.enter_context(pruned_layer_sdpa(
                hidden.device, self.past_length > 0, self.runtime.model_config._attn_implementation))
        # The keys the layer's attention sees: what its cache holds (a sliding-window layer keeps only its last
        # window - 1) and this forward's tokens.
        total = self.state.key_slots[group].shape[1]
        cache = self.runtime.family.layer_cache(kwargs)
        held = None if cache is None else cached_keys(cache, layer.index)
        # Every layer, sliding-window ones too, must have been given the keys of its token set, no more, no fewer.
        seen = None if cache is None else seen_keys(cache, layer.index)
        if seen is not None and seen + hidden.shape[1] != total:
            raise RuntimeError(
                f"SDTP: decoder layer {layer.index}'s KV cache was given {seen} keys, but the tokens it was given hold "
                f"{total - hidden.shape[1]}: the cache was changed outside SDTP's forwards. Assisted and prompt-lookup "
                "decoding crop the cache by position, which a pruned layer's compacted cache cannot follow; generate "
                "with plain greedy, sampling or beam search")
        visible = total if held is None else min(total, held + hidden.shape[1])
        key = (group, layer.window, visible)
        if key not in self.group_inputs:
            self.group_inputs[key] = self._group_inputs(group, layer.window, visible, kwargs, hidden.dtype)
        return hidden, {**kwargs, **self.group_inputs[key]}

    def close(self) -> None:
        """The forward has ended, returned or raised."""
        if self.pruned_sdpa is not None:
            self.pruned_sdpa.close()

    def _start(self, hidden: torch.Tensor, kwargs: dict) -> None:
        run = self.runtime
        batch, length = hidden.shape[:2]
        self.columns = self.past_length + length
        cache = run.family.layer_cache(kwargs)
        if self.past_length == 0:
            if run.enabled:
                self.plan = _Plan(run.config, self._prompt_lengths(batch, length), run.tails(batch), run.num_stages)
                if self.positional is not None and any(self.plan.active):
                    raise ValueError(_POSITIONAL[self.positional])
            # Also when pruning is off: a reused cache must not keep the token sets of an earlier prompt.
            self.state = PrunedCacheState.unpruned(run.num_stages)
            if cache is not None:
                attach(cache, self.state)
            return
        self.state = state_of(cache) if cache is not None else None
        if self.state is None:  # a cache filled without pruning
            self.state = PrunedCacheState.unpruned(run.num_stages)
            return
        new = torch.arange(self.past_length, self.past_length + length, device=hidden.device).expand(batch, length)
        self.state.key_slots = [torch.cat([s, new.to(s.device)], 1) for s in self.state.key_slots]
        self.query_slots = new

    def _prompt_lengths(self, batch: int, length: int) -> list[int]:
        if self.padding_mask is None:
            return [length] * batch
        if self.padding_mask.shape[1] != length:
            raise ValueError(
                f"SDTP: the attention mask covers {self.padding_mask.shape[1]} tokens but the prompt has {length}"
            )
        return self.real_lengths

    def _prune(self, stage: int, predictor: SaliencyPredictor, hidden: torch.Tensor) -> torch.Tensor:
        state, plan, config = self.state, self.plan, self.runtime.config
        previous = state.group_of_stage[stage - 1]
        state.group_of_stage[stage] = previous
        if not plan.active[stage]:
            return hidden
        with torch.profiler.record_function("sdtp.prune"):
            current = None if previous is None else state.key_slots[previous]
            valid = self.padding_mask if current is None else current >= 0
            scores = self.runtime.scorer.score(stage, hidden, predictor, valid)
            if scores.shape != hidden.shape[:2]:  # a scorer is user code; the ops below trust their indices (§3.4)
                raise ValueError(f"SDTP: scorer '{self.runtime.scorer.name}' returned scores of shape "
                                 f"{tuple(scores.shape)} at stage {stage}; expected one per token, "
                                 f"{tuple(hidden.shape[:2])}")
            scores = scores.to(hidden.device)  # a scorer on another device: the masks below belong to the layers
            rows = plan.row_counts(scores.device)
            index, _ = ops.select_tokens(
                scores,
                rows[stage],
                None if valid is None else valid.to(scores.device),
                config.num_sink,
                rows[-1],
                width=max(plan.counts[stage]),
                check=False,  # the plan's own counts and width: no host read checks them (§3.4)
            )
            slots = index if current is None else torch.where(index >= 0, gather_rows(current, index), -1)
            state.key_slots.append(slots)
            state.uniform.append(min(plan.counts[stage]) == max(plan.counts[stage]))
            state.group_of_stage[stage] = len(state.key_slots) - 1
            return gather_rows(hidden, index)

    def _group_inputs(self, group: int, window: Optional[int], visible: int, kwargs: dict,
                      dtype: torch.dtype) -> dict[str, Any]:
        """attention_mask and positions of the layers that hold token set `group`, attend through `window` and see
        its last `visible` keys; built once per forward."""
        run = self.runtime
        attn = run.model_config._attn_implementation
        keys = self.state.key_slots[group][:, -visible:]
        with torch.profiler.record_function("sdtp.prune"):
            # A window that reaches every column so far (past and this forward's) is full attention, and costs
            # nothing: Mistral's default 4096 leaves shorter prompts and their decoding unmasked.
            if window is not None and window >= self.columns:
                window = None
            # sdpa needs no mask where no row has an empty slot and no window cuts the keys: in a prefill the mask
            # is plain causal (sdpa's is_causal); in a decode where transformers gives the unpruned layers none (no
            # padding), every cached key is attended, so the same unmasked kernels run as for them.
            unmasked = attn == "sdpa" and self.state.uniform[group] and window is None
            if self.plan is not None:  # prefill: the queries are the kept tokens themselves
                queries = keys
                mask = None if unmasked else format_mask(slot_mask(keys, keys, window=window), attn, dtype)
            else:
                queries, mask = None, None
                if not (unmasked and kwargs.get("attention_mask") is None):
                    real = None
                    if self.padding_mask is not None:
                        real = self.padding_mask.to(keys.device).gather(1, keys.clamp(min=0))
                    mask = format_mask(slot_mask(self.query_slots.to(keys.device), keys, real, window), attn, dtype)
            return {"attention_mask": mask, **run.family.position_kwargs(kwargs, queries, keys)}


# A pruning prefill has logits only for the tokens that reach the last layer, right-aligned: no loss over every
# position, and no logits picked by position. A prefill that prunes nothing (keep_ratio = 1.0, a short prompt) serves
# both.
_POSITIONAL = {
    "labels": "SDTP prunes the prefill, so its logits cover only the tokens that reach the last layer and labels= "
              "(a loss over every position) cannot be computed from them; compute the loss inside "
              "`with sdtp_disabled(model):`, or from the returned logits of the kept tokens",
    "logits_to_keep": "SDTP prunes the prefill, so a tensor logits_to_keep (positions of the prompt) would index the "
                      "kept tokens instead; pass an int (the last that many, e.g. 1), or run inside "
                      "`with sdtp_disabled(model):`",
    "output_router_logits": "SDTP prunes the prefill, so the MoE router logits of later layers cover fewer tokens "
                            "than the attention mask the auxiliary loss applies to every layer; pass "
                            "output_router_logits=False, or run inside `with sdtp_disabled(model):`",
}
_CONCURRENT = ("SDTP: this model is running a forward in another thread; a patched model runs one forward at a time "
               "(its pruned layers share that forward's state): serialise the calls, or give each thread its own model")

# The model each bound scorer serves (a scorer's hooks and captured state belong to one model), by the scorer's id:
# a scorer need not be hashable. While its model lives, the model holds the scorer, so the id is not reused.
_SCORER_OWNERS: dict[int, weakref.ref] = {}


class SDTPRuntime:
    """The SDTP state of one patched model: its schedule, a switch, and the forward in flight."""

    def __init__(self, model: nn.Module, family: Any, config: SDTPConfig, stage_layers: list[int], scorer: Scorer):
        self.family = family
        self.config = config
        self.stage_layers = stage_layers
        self.num_stages = len(stage_layers)
        self.model_config = model.config
        self.enabled = True
        self.protected_tail: Optional[list[int]] = None  # per row: last tokens every stage keeps (protected_tail)
        self.forward: Optional[_Forward] = None
        self._model = model
        self._layers = list(family.decoder_layers(model))  # unwrapped: taken before apply_sdtp wraps them
        self.scorer = scorer
        self._bind(scorer)
        base = family.base_model(model)
        self._call = ModelCall(base)
        self._top_call = ModelCall(model)
        # Per thread: the argument the model's pre-hook found, taken by that thread's next _Forward.
        self._positional: dict[int, Optional[str]] = {}
        self._running: dict[str, int] = {}  # "thread": the thread whose forward is in flight
        if hasattr(type(model), "_prefill"):  # how generate prefills (transformers 5.17 to 5.24)
            model._prefill = self._refuse_chunked_prefill
        self._hooks = [
            model.register_forward_pre_hook(self._note_positional_outputs, with_kwargs=True),
            base.register_forward_pre_hook(self._begin, with_kwargs=True),
            base.register_forward_hook(self._end, always_call=True),
        ]

    def tails(self, batch: int) -> list[int]:
        if self.protected_tail is None:
            return [0] * batch
        if len(self.protected_tail) != batch:
            raise ValueError(f"SDTP: protected_tail has {len(self.protected_tail)} entries for a batch of {batch} rows")
        return self.protected_tail

    def prunes(self, lengths: list[int], tails: list[int]) -> bool:
        """Whether a prefill of rows with these real lengths and protected tails would remove any token."""
        if len(tails) != len(lengths):
            raise ValueError(f"SDTP: {len(tails)} protected tails for {len(lengths)} rows; give one per row")
        return self.enabled and any(_Plan(self.config, lengths, tails, self.num_stages).active)

    def set_scorer(self, scorer: Scorer) -> Scorer:
        """Rank tokens with `scorer` from now on; returns the scorer it replaces (unbound), or `scorer` itself when
        it is already this model's."""
        if scorer is self.scorer:
            return scorer
        self._bind(scorer)
        previous, self.scorer = self.scorer, scorer
        self._unbind(previous)
        return previous

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        vars(self._model).pop("_prefill", None)
        self._unbind(self.scorer)
        self.forward = None

    def _bind(self, scorer: Scorer) -> None:
        owner = _SCORER_OWNERS.get(id(scorer))
        if owner is not None and owner() is not None:
            gc.collect()  # a model its user dropped lives on in its reference cycles until the collector runs
            if owner() is not None:
                raise ValueError(f"scorer {scorer.name!r} already ranks the tokens of another model; a scorer serves "
                                 "one model at a time: give this one its own instance")
        scorer.bind(self._model, self._layers, self.stage_layers)
        for key in [key for key, ref in _SCORER_OWNERS.items() if ref() is None]:  # models gone without close()
            del _SCORER_OWNERS[key]
        _SCORER_OWNERS[id(scorer)] = weakref.ref(self._model)

    @staticmethod
    def _unbind(scorer: Scorer) -> None:
        scorer.unbind()
        _SCORER_OWNERS.pop(id(scorer), None)

    def layer_inputs(self, layer, hidden: torch.Tensor, kwargs: dict):
        if self.forward is None:  # a layer called on its own, outside the model's forward
            return hidden, kwargs
        return self.forward.layer_inputs(layer, hidden, kwargs)

    def _note_positional_outputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Which argument of this call a pruning prefill refuses; refused once its plan is known (_Forward._start)."""
        argument = self._top_call.arguments(args, kwargs)
        router_logits = argument("output_router_logits")
        if router_logits is None:
            router_logits = getattr(self.model_config, "output_router_logits", False)
        self._positional[threading.get_ident()] = (
            "labels" if argument("labels") is not None
            else "logits_to_keep" if isinstance(argument("logits_to_keep"), torch.Tensor)
            else "output_router_logits" if router_logits else None)

    def _refuse_chunked_prefill(self, input_ids: torch.Tensor, generation_config: Any, *args, **kwargs):
        """generate's prefill (transformers' `_prefill`), refused when split into chunks: SDTP prunes a prefill in one
        forward, and every chunk after the first would run as a continuation, unpruned."""
        if self.enabled and getattr(generation_config, "prefill_chunk_size", None) is not None:
            raise NotImplementedError(
                "SDTP prunes the prompt in one forward, but generate(prefill_chunk_size=...) splits it, and the chunks "
                "after the first would run unpruned; leave prefill_chunk_size unset, or generate inside "
                "`with sdtp_disabled(model):`")
        return type(self._model)._prefill(self._model, input_ids, generation_config, *args, **kwargs)

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        thread = threading.get_ident()
        positional = self._positional.pop(thread, None)
        if self._running.setdefault("thread", thread) != thread:  # atomic: one thread's forward at a time
            raise RuntimeError(_CONCURRENT)
        padding_mask, cache = self._call.inputs(args, kwargs, self.enabled and self.config.keep_ratio < 1)
        past = cache.get_seq_length() if cache is not None else 0
        self.forward = _Forward(self, padding_mask, past, positional)

    def _end(self, module: nn.Module, args: tuple, output: Any) -> None:
        thread = threading.get_ident()
        if self._running.get("thread", thread) != thread:
            return  # a call refused in _begin: the other thread's forward runs on
        if self.forward is not None:
            self.forward.close()
        self.forward = None
        self._running.pop("thread", None)
