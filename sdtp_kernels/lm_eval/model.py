"""The harness model `sdtp`: the harness's Hugging Face model (`HFLM`: its batching, tokenisation and caching) with
SDTP's pruned prefill on the model it loads.

- `generate_until` runs `model.generate` on the harness's left-padded batches: pruned prefill, pruned KV cache.
- `loglikelihood`: the harness right-pads (context + continuation)[:-1] and reads the logits of each row's last
  len(continuation) positions. Those are protected at every stage (`protected_tail`), so they are never pruned and
  their logits come back; they are put back at the positions the harness reads.
- `loglikelihood_rolling` (perplexity) scores every token, so nothing could be pruned: refused unless sdtp=off.

Model args: pretrained=DIR (a local model folder), predictors=DIR (default: DIR/sdtp when it exists), the schedule
(keep_ratio=, start_layer=, layer_step=, num_stages=, num_sink=, local_ratio=), scorer=predictor|random|attention
(the baselines keep the same counts), seed= (the random scorer's), sdtp=on|off (off: the plain HFLM model)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..config import SDTPConfig
from ..hf import apply_sdtp, prefill_prunes, protected_tail, sdtp_disabled
from ..hf.model_dir import local_model_dir
from ..hf.scorers import make_scorer
from ..predictor_file import read_predictors

_SCHEDULE = {f.name: f.type for f in dataclasses.fields(SDTPConfig)}
_PAD = 0  # the harness right-pads log-likelihood batches with token id 0


def _switch(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("on", "off", "true", "false", "1", "0"):
        raise ValueError(f"sdtp: model arg sdtp must be on or off, got {value!r}")
    return text in ("on", "true", "1")


def _number(name: str, value: Any, whole: bool) -> Any:
    """A model arg as a number ("0.7" -> 0.7, "4" -> 4), refused by name if it is not one (or, for `whole`, a
    fraction: SDTPConfig takes ints there, and 2.5 must not become 2)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number or (whole and not number.is_integer()):
        raise ValueError(f"sdtp: model arg {name} must be {'an integer' if whole else 'a number'}, got {value!r}")
    return int(number) if whole else number


def _schedule(args: dict[str, Any]) -> dict[str, Any]:
    """The schedule overrides among the model args, as SDTPConfig's types."""
    return {name: _number(name, args[name], whole="float" not in str(kind))
            for name, kind in _SCHEDULE.items() if args.get(name) is not None}


@register_model("sdtp")
class SDTPLM(HFLM):
    def __init__(self, pretrained: str, predictors: Optional[str] = None, sdtp: Any = "on",
                 scorer: str = "predictor", seed: int = 0, **kwargs: Any):
        schedule = _schedule({name: kwargs.pop(name, None) for name in _SCHEDULE})
        self._pruning = _switch(sdtp)
        if self._pruning and kwargs.get("peft"):
            raise ValueError("sdtp: peft= adapters are not supported with pruning on: merge the adapter into the "
                             "model (PeftModel.merge_and_unload(), then save_pretrained) and pass that folder as "
                             "pretrained=, or run sdtp=off")
        if isinstance(pretrained, str):
            local_model_dir(pretrained, "pretrained=")
        if kwargs.get("device") is None:  # HFLM's own default is "cuda", also where there is none
            kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if self._pruning and scorer == "attention":
            kwargs.setdefault("attn_implementation", "eager")  # the only one that returns attention probabilities
        super().__init__(pretrained=pretrained, **kwargs)
        self._continuations: dict[tuple[int, ...], int] = {}
        if not self._pruning:
            return
        if predictors is None and isinstance(pretrained, str) and os.path.isdir(os.path.join(pretrained, "sdtp")):
            predictors = os.path.join(pretrained, "sdtp")
        if predictors is None and scorer == "predictor":
            raise ValueError("sdtp: scorer=predictor needs trained predictors: pass predictors=DIR (or put them in "
                             "PRETRAINED/sdtp), or use scorer=random / scorer=attention")
        chosen = make_scorer(scorer, **({"seed": _number("seed", seed, whole=True)} if scorer == "random" else {}))
        # The baselines rank without predictors: they take the saved schedule (or the default one), overridden like
        # saved predictors, on any stage layers the overrides give.
        source = predictors
        if scorer != "predictor":
            source = read_predictors(predictors).config if predictors is not None else SDTPConfig()
        apply_sdtp(self.model, source, scorer=chosen, **schedule)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self._pruning:
            tasks = sorted({r.task_name for r in requests if getattr(r, "task_name", None)})
            raise ValueError(
                f"sdtp: {', '.join(tasks) or 'this task'} asks for loglikelihood_rolling (perplexity), which scores "
                "every token of the text, so SDTP could prune nothing; run it with sdtp=off (the dense model)"
            )
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if not self._pruning:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # The model input of each request, as the harness builds it, and the continuation it scores.
        self._continuations = {}
        for _, context, continuation in requests:
            inp = tuple((context + continuation)[-(self.max_length + 1):][:-1])
            self._continuations[inp] = max(len(continuation), self._continuations.get(inp, 0))
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._continuations = {}

    def _rows(self, inps: torch.Tensor) -> Optional[tuple[list[int], list[int]]]:
        """(real length, protected tail) of each right-padded row, or None for a batch that is no request's (the
        harness's batch-size probe). A row whose real tokens end in the pad id can match several requests; then the
        tail covers the positions every one of them scores."""
        lengths, tails, unmatched = [], [], 0
        for row in inps.tolist():
            found, length = [], len(row)
            while length > 0:
                if (contlen := self._continuations.get(tuple(row[:length]))) is not None:
                    found.append((length, contlen))
                if row[length - 1] != _PAD:
                    break
                length -= 1
            if not found:
                unmatched += 1
                continue
            end = max(n for n, _ in found)
            lengths.append(end)
            tails.append(end - min(n - c for n, c in found))
        if unmatched == inps.shape[0]:
            return None
        if unmatched:
            raise RuntimeError("sdtp: a log-likelihood batch row matches none of the requests it was built from")
        return lengths, tails

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if not self._pruning:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        rows = self._rows(inps) if self._continuations else None
        # Dense: the harness probing how large a batch fits (batch_size=auto), whose rows are no request's: the
        # dense call's [B, N, vocab] logits are what a pruned batch's scattered logits allocate too, and its layers
        # run more tokens, so the size it finds fits. Or a batch that prunes nothing: its logits keep the layout.
        if rows is None or not prefill_prunes(self.model, *rows):
            with sdtp_disabled(self.model):
                return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        lengths, tails = rows
        width = inps.shape[1]
        mask = (torch.arange(width, device=inps.device)[None, :] < torch.tensor(lengths, device=inps.device)[:, None])
        with (torch.no_grad(), protected_tail(self.model, tails),
              torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                             enabled=self.mixed_precision_dtype is not None)):
            kept = self.model(inps, attention_mask=mask.long()).logits  # right-aligned: each row's tail is last
        # Back to the harness's layout: the tail's logits at the positions it reads; the pruned ones are never read.
        logits = kept.new_zeros(inps.shape[0], width, kept.shape[-1])
        for row, (length, tail) in enumerate(zip(lengths, tails)):
            logits[row, length - tail:length] = kept[row, kept.shape[1] - tail:]
        return logits
