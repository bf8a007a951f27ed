"""The quality loop: held-out prompts through the unpruned model and through the physically pruned prefill with
each scorer at each keep ratio (docs/ARCHITECTURE.md §6).

Every method runs the same pruned prefill (`apply_sdtp`: score -> `select_tokens` -> `compact` at each stage
layer), so all of them keep exactly the same number of tokens per stage and the same protected tokens (the first
`num_sink`, the last ceil(local_ratio * L)); only the scorer that ranks the other tokens differs:

- ``none``: the unpruned model;
- ``sdtp``: the trained predictors (scorer ``predictor``);
- ``random``: uniform random scores (scorer ``random``, seeded);
- ``attention``: the attention the last prompt token paid to every token in the decoder layer just before the stage
  layer, averaged over heads (scorer ``attention``, FastV style; needs eager attention).

Reported per method and keep ratio: answer accuracy (arg-max of the last-token logits = the answer), agreement of the
last-token logits with the unpruned model (top-1 agreement and KL(unpruned || pruned)), and, where the prompts say
where their answer sits in the context (the retrieval task's ``answer_position``), how often that token survives every
stage.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..config import SDTPConfig
from ..hf import apply_sdtp, key_positions, remove_sdtp, sdtp_predictors, set_scorer
from ..hf.model_call import output_cache
from .prompts import Prompt, PromptBatch, prompt_batches

METHODS = ("sdtp", "random", "attention")
METHOD_SCORERS = {"sdtp": "predictor", "random": "random", "attention": "attention"}
DEFAULT_KEEP_RATIOS = (0.9, 0.7)


@torch.no_grad()
def _run(model: nn.Module, batch: PromptBatch, want_kept: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Last-token logits [B, V] float32, and [B, K] the columns of the tokens that reached the last layer (-1: an
    empty slot) when asked and something was pruned."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=want_kept,
                logits_to_keep=1)
    logits = out.logits[:, -1].float()
    if not want_kept:
        return logits, None
    pruned = [k for k in key_positions(output_cache(out)) if k is not None]
    return logits, (pruned[-1] if pruned else None)


class _Tally:
    """Running sums of one method at one keep ratio."""

    def __init__(self):
        self.n = 0
        self.correct = 0
        self.top1 = 0
        self.kl = 0.0
        self.answer_kept = 0
        self.answer_known = 0
        self.kept_tokens = 0
        self.prompt_tokens = 0

    def add(self, logits, reference, batch: PromptBatch, kept: Optional[torch.Tensor]) -> None:
        self.n += logits.shape[0]
        self.correct += int((logits.argmax(-1) == batch.answers).sum())
        if reference is not None:
            self.top1 += int((logits.argmax(-1) == reference.argmax(-1)).sum())
            ref_log = torch.log_softmax(reference, -1)
            self.kl += float((ref_log.exp() * (ref_log - torch.log_softmax(logits, -1))).sum(-1).clamp_min(0).sum())
        lengths = batch.attention_mask.sum(1)
        self.prompt_tokens += int(lengths.sum())
        if kept is None:
            self.kept_tokens += int(lengths.sum())
        else:
            self.kept_tokens += int((kept >= 0).sum())
        known = batch.answer_columns >= 0  # row by row: a batch's other rows count whatever this one lacks
        found = known if kept is None else (kept == batch.answer_columns[:, None]).any(1) & known
        self.answer_known += int(known.sum())
        self.answer_kept += int(found.sum())

    def summary(self) -> dict[str, Optional[float]]:
        return {
            "accuracy": self.correct / self.n,
            "top1_agreement": self.top1 / self.n,
            "kl": self.kl / self.n,
            "answer_kept": self.answer_kept / self.answer_known if self.answer_known else None,
            "kept_fraction": self.kept_tokens / self.prompt_tokens,
        }


def _key(ratio: float) -> str:
    return repr(float(ratio))


def answer_accuracy(model: nn.Module, prompts: Sequence[Prompt], batch_size: int = 64) -> float:
    """The share of prompts whose last-token arg-max is their answer, the model run as it is."""
    tally = _Tally()
    for batch in prompt_batches(prompts, batch_size, next(model.parameters()).device):
        logits, _ = _run(model, batch, want_kept=False)
        tally.add(logits, None, batch, None)
    return tally.summary()["accuracy"]


def evaluate_pruning(
    model: nn.Module,
    config: SDTPConfig,
    predictor_state: Optional[dict[str, torch.Tensor]],
    prompts: Sequence[Prompt],
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    methods: Sequence[str] = METHODS,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy, agreement with the unpruned model and answer survival of each method at each keep ratio.
    `model`: an unpatched causal LM (patched and restored here); `config`: the schedule (its keep_ratio is replaced
    by each of `keep_ratios`); `predictor_state`: the trained predictors' state dict (ModuleList keys "0.fc1.weight",
    ...), needed for "sdtp" only; `seed`: the random scorer's. Returns {"none": summary, method: {ratio: summary}}."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if "sdtp" in methods and predictor_state is None:
        raise ValueError("the sdtp method needs trained predictors")
    batches = list(prompt_batches(prompts, batch_size, next(model.parameters()).device))
    reference, none = [], _Tally()
    for batch in batches:
        logits, _ = _run(model, batch, want_kept=False)
        reference.append(logits)
        none.add(logits, logits, batch, None)
    results: dict[str, Any] = {"none": none.summary(), **{method: {} for method in methods}}
    for ratio in keep_ratios:
        apply_sdtp(model, dataclasses.replace(config, keep_ratio=float(ratio)))
        try:
            if predictor_state is not None:
                sdtp_predictors(model).load_state_dict(predictor_state)
            for method in methods:
                options = {"seed": seed} if method == "random" else {}
                set_scorer(model, METHOD_SCORERS[method], **options)
                tally = _Tally()
                for batch, ref in zip(batches, reference):
                    logits, kept = _run(model, batch, want_kept=True)
                    tally.add(logits, ref, batch, kept)
                summary = results[method][_key(ratio)] = tally.summary()
                if progress:
                    print(f"  keep_ratio {ratio} {method:9s} accuracy {summary['accuracy']:.3f} top1 "
                          f"{summary['top1_agreement']:.3f} kl {summary['kl']:.4f} answer_kept "
                          f"{summary['answer_kept']}", file=sys.stderr, flush=True)
        finally:
            remove_sdtp(model)
    return results
