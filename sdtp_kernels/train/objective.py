"""The training loss of one batch (docs/ARCHITECTURE.md §5.2): the frozen model runs the masked simulation of SDTP
with sampled keep decisions, and the predictors are scored against the marked saliency and the schedule."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..config import SDTPConfig
from ..hf.masked import MaskedPruning
from ..predictor import SaliencyPredictor
from .attention import policy_attention_mask
from .data import Batch
from .gumbel import gumbel_noise, next_alive
from .losses import (
    Normalizer, keep_ratio_loss, kl_rows, labelled_positions, lm_loss_rows, masked_mse, ranking_loss,
)
from .model import frozen_precision, full_precision
from .options import LossOptions
from .schedule import keep_fractions, protected_tokens


class PredictorObjective(nn.Module):
    """The module that DDP wraps: its parameters are the predictors only; the frozen model it runs is held outside
    the module tree, so DDP neither broadcasts nor reduces its weights (nor FSDP's shards of it).

    `normalizer`: what the token-mean terms divide their sums by (`losses.Normalizer`): under data parallelism the
    trainer passes the mean count over processes, so that a step's update does not depend on how its global batch is
    split between them."""

    def __init__(self, model: nn.Module, config: SDTPConfig, predictors: nn.ModuleList, options: LossOptions,
                 normalizer: Optional[Normalizer] = None):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule (see above)
        self.config, self.options = config, options
        self.predictors = predictors
        self.normalizer = normalizer or (lambda count: count)

    def forward(
        self,
        batch: Batch,
        saliency: torch.Tensor,
        teacher_logits: Optional[torch.Tensor],
        generators: Optional[Sequence[torch.Generator]],
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one batch and their weighted sum "loss". saliency [S, B, N] from `token_saliency`;
        teacher_logits: the unpruned model's logits at `labelled_positions` (task "kl" only); generators: one per
        row, for its Gumbel noise and sampled ranking pairs (None: the global generator)."""
        opts, config = self.options, self.config
        real = batch.attention_mask.bool()
        protected = protected_tokens(config, batch.prompt_mask, real)
        stage_logits: list[torch.Tensor] = []
        stage_masks: dict[tuple, torch.Tensor] = {}
        device = batch.input_ids.device

        def decide(stage, hidden, alive, valid):
            stage_masks.clear()  # new decisions: new masks
            with full_precision(device):
                logits = self.predictors[stage - 1].logits(hidden)
            stage_logits.append(logits)
            return next_alive(logits, alive, protected, opts.tau, gumbel_noise(logits, real, generators))

        def mask(policy, dtype, window):
            # The layers of a stage share one mask: built once, and held once by checkpointed layers (their input).
            key = (window, tuple(policy.shape), dtype)
            if key not in stage_masks:
                stage_masks[key] = policy_attention_mask(policy, real, dtype, window)
            return stage_masks[key]

        positions, targets = labelled_positions(batch.labels)
        with frozen_precision(self.model, device), MaskedPruning(self.model, config, decide, to_mask=mask) as \
                simulation:
            logits = self.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=positions,
                use_cache=False,
            ).logits
        alive = simulation.alive  # [0]: the real tokens; [s]: alive after stage s

        if opts.task == "lm":
            task = lm_loss_rows(logits, targets).mean()
        else:
            task = kl_rows(logits, teacher_logits, targets).mean()
        mse, rank = [], []
        for stage, stage_logit in enumerate(stage_logits, start=1):
            scores = SaliencyPredictor.log_odds(stage_logit)
            # The tokens this stage ranks at inference: alive before it, in the prompt, not protected.
            candidates = (alive[stage - 1] > 0.5) & batch.prompt_mask & ~protected
            mse.append(masked_mse(scores, saliency[stage - 1], candidates, self.normalizer))
            rank.append(ranking_loss(scores, saliency[stage - 1], candidates, opts.rank_pairs, generators,
                                     self.normalizer))
        prompt = batch.prompt_mask.float()
        kept = torch.stack([(a * prompt).sum(1) / prompt.sum(1) for a in alive[1:]])
        target = keep_fractions(config, batch.prompt_mask, len(stage_logits))
        ratio = keep_ratio_loss(kept, target)
        terms = {"task": task, "mse": torch.stack(mse).mean(), "rank": torch.stack(rank).mean(), "ratio": ratio}
        weights = (opts.task_weight, opts.mse_weight, opts.rank_weight, opts.ratio_weight)
        loss = sum(weight * value for weight, value in zip(weights, terms.values()))
        return {"loss": loss, **terms, "kept": kept[-1].detach().mean(), "kept_target": target[-1].mean()}
