"""Marked saliency of held-out prompts, and how well predictor scores follow it: the Spearman correlation, per row
and stage, over the tokens each stage ranks (prompt tokens that are not protected), on the unpruned sequence;
for the trained predictors and, as the baseline, the mean over several freshly initialised sets."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..config import SDTPConfig
from ..hf import apply_sdtp, remove_sdtp, sdtp_disabled, sdtp_predictors
from ..hf.families import family_of
from ..hf.masked import StageScore
from ..train.data import IGNORE_INDEX, Example, collate
from ..train.options import SaliencyOptions
from ..train.saliency import token_saliency
from ..train.schedule import protected_tokens
from .prompts import Prompt
from .statistics import mean, spearman


def _stage_inputs(model: nn.Module, stage_layers: Sequence[int], batch) -> list[torch.Tensor]:
    """The hidden states entering each stage layer on the unpruned sequence (what the marking differentiates)."""
    layers = family_of(model).decoder_layers(model)
    inputs: dict[int, torch.Tensor] = {}

    def capture(index):
        def pre_hook(module, args, kwargs):
            inputs[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        return pre_hook

    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(sdtp_disabled(model))
        for index in stage_layers:
            stack.enter_context(layers[index].register_forward_pre_hook(capture(index), with_kwargs=True))
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1, use_cache=False)
    return [inputs[index] for index in stage_layers]


@dataclasses.dataclass(frozen=True)
class MarkedBatch:
    """A batch of prompts as a stage predictor sees them, with its training target."""

    saliency: torch.Tensor  # [S, B, N] marked saliency (`train.saliency.token_saliency`)
    stage_inputs: list[torch.Tensor]  # S x [B, N, D]: the hidden states entering each stage layer, unpruned
    ranked: torch.Tensor  # [B, N] bool: the tokens a stage ranks (prompt tokens that are not protected)


def mark_prompts(
    model: nn.Module,
    config: SDTPConfig,
    prompts: Sequence[Prompt],
    saliency_options: Optional[SaliencyOptions] = None,
    batch_size: int = 16,
) -> list[MarkedBatch]:
    """Each prompt followed by its answer, marked with the loss on the answer and on the prompt's own labelled
    tokens (what training on the same records marks)."""
    options = saliency_options or SaliencyOptions()
    device = next(model.parameters()).device
    layers = config.stage_layers(len(family_of(model).decoder_layers(model)))
    examples = [Example(p.input_ids + [p.answer], (p.labels or [IGNORE_INDEX] * len(p.input_ids)) + [p.answer],
                        len(p.input_ids)) for p in prompts]
    marked = []
    apply_sdtp(model, config)
    try:
        for first in range(0, len(examples), batch_size):
            batch = collate(examples[first : first + batch_size], range(first, first + batch_size)).to(device)
            real = batch.attention_mask.bool()
            marked.append(MarkedBatch(
                token_saliency(model, config, batch, options).detach(),
                _stage_inputs(model, layers, batch),
                batch.prompt_mask & ~protected_tokens(config, batch.prompt_mask, real),
            ))
    finally:
        remove_sdtp(model)
    return marked


def mean_spearman(score_fn: StageScore, marked: Sequence[MarkedBatch]) -> list[float]:
    """Per stage: the mean over rows of Spearman(score_fn(stage, stage input) [B, N], marked saliency) over the
    tokens that stage ranks (rows where either side is constant are left out)."""
    per_stage: list[list[float]] = [[] for _ in marked[0].stage_inputs] if marked else []
    with torch.no_grad():
        for batch in marked:
            for s, hidden in enumerate(batch.stage_inputs):
                scores = score_fn(s, hidden)
                for row in range(scores.shape[0]):
                    ranked = batch.ranked[row]
                    rho = spearman(scores[row][ranked], batch.saliency[s, row][ranked])
                    if not math.isnan(rho):
                        per_stage[s].append(rho)
    return [mean(v) for v in per_stage]


def evaluate_spearman(
    model: nn.Module,
    config: SDTPConfig,
    trained_state: dict[str, torch.Tensor],
    prompts: Sequence[Prompt],
    saliency_options: Optional[SaliencyOptions] = None,
    batch_size: int = 16,
    untrained_seeds: Sequence[int] = range(8),
) -> dict[str, Any]:
    """Mean Spearman correlation (over rows, per stage and over all stages) between predictor scores and the marked
    saliency of the tokens a stage ranks: for the trained predictors, and for freshly initialised ones of each seed
    in `untrained_seeds` (one random initialisation can correlate with anything that differs between token kinds,
    with either sign; their mean is the untrained baseline)."""
    options = saliency_options or SaliencyOptions()
    layers = config.stage_layers(len(family_of(model).decoder_layers(model)))
    marked = mark_prompts(model, config, prompts, options, batch_size)
    seeds = list(untrained_seeds)

    def stage_means(state: Optional[dict[str, torch.Tensor]], seed: int = 0) -> list[float]:
        torch.manual_seed(seed)
        apply_sdtp(model, config)
        try:
            predictors = sdtp_predictors(model)
            if state is not None:
                predictors.load_state_dict(state)
            return mean_spearman(lambda s, hidden: predictors[s].log_odds(predictors[s].logits(hidden)), marked)
        finally:
            remove_sdtp(model)

    trained = stage_means(trained_state)
    untrained = [mean(stage_means(None, seed)) for seed in seeds]
    return {
        "trained": mean(trained),
        "trained_per_stage": trained,
        "untrained": mean(untrained),
        "untrained_per_seed": untrained,
        "untrained_seeds": seeds,
        "prompts": len(prompts),
        "stage_layers": list(layers),
        "saliency": options.describe(),
    }
