"""The losses of predictor training (docs/ARCHITECTURE.md §5.2) and the LM objective that marking differentiates.

Per-row means keep each row's loss independent of what it is batched with: the saliency of a row's tokens is the
gradient of that row's loss alone.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import IGNORE_INDEX


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [P], targets [B, P]): the positions whose next token carries a label in some row, and those labels
    (IGNORE_INDEX where a row has none). Pass `positions` as `logits_to_keep` so the LM head runs only there."""
    next_labels = labels[:, 1:]
    positions = (next_labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    return positions, next_labels[:, positions]


def _row_mean(per_token: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    labelled = targets != IGNORE_INDEX
    return (per_token * labelled).sum(1) / labelled.sum(1).clamp_min(1)


CHUNK_ELEMENTS = 1 << 26  # float32 logits a per-token loss holds at a time: 256 MiB


def _by_position(per_token: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """per_token(*tensors) [B, P] over chunks of positions, each recomputed in the backward. The losses work in
    float32 whatever the logits' dtype: unchunked, the float32 copies the backward keeps are 2x (cross-entropy) to
    4x (KL) the bf16 logits [B, P, V] (V = 128K at 4K labelled positions: 2-4 GiB a row); chunked, they exist for
    one chunk at a time."""
    rows, positions, vocab = tensors[0].shape
    step = max(1, CHUNK_ELEMENTS // max(1, rows * vocab))
    if step >= positions:
        return per_token(*tensors)
    return torch.cat([checkpoint(per_token, *(t[:, first : first + step] for t in tensors), use_reentrant=False)
                      for first in range(0, positions, step)], 1)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")


def _kl(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    log_student = logits.float().log_softmax(-1)
    log_teacher = teacher_logits.float().log_softmax(-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1)


def lm_loss_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B]: each row's mean cross-entropy over its labelled tokens. logits [B, P, V] at `labelled_positions`."""
    return _row_mean(_by_position(_cross_entropy, logits, targets), targets)


def kl_rows(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B]: each row's mean KL(teacher || student) of the next-token distributions at its labelled positions."""
    return _row_mean(_by_position(_kl, logits, teacher_logits), targets)


Normalizer = Callable[[torch.Tensor], torch.Tensor]
"""count -> what a loss summed over `count` terms divides by. By default the count itself (the batch's mean); under
data parallelism the mean count per process, so that the processes' averaged gradient is that of the mean over all
of the step's terms (docs/ARCHITECTURE.md §5.2)."""


def _own_count(count: torch.Tensor) -> torch.Tensor:
    return count


def masked_mse(scores: torch.Tensor, saliency: torch.Tensor, candidates: torch.Tensor,
               normalizer: Normalizer = _own_count) -> torch.Tensor:
    """Mean squared error between predictor scores and saliency over each row's candidate tokens, both centred on
    their row mean over the candidates. The score's offset is the keep probability that the keep-ratio term sets;
    an uncentred MSE would pull it towards the saliency's mean (0 after z-scoring) and fight that term. Selection
    by top-k is shift-invariant, so nothing the predictor is used for depends on the offset."""
    weight = candidates.to(scores.dtype)
    count = weight.sum(1, keepdim=True).clamp_min(1)

    def centred(values: torch.Tensor) -> torch.Tensor:
        return values - (values * weight).sum(1, keepdim=True) / count

    error = (centred(scores) - centred(saliency)).pow(2) * weight
    return error.sum() / normalizer(weight.sum().detach()).clamp_min(1)


def _pairs(
    candidates: torch.Tensor, max_pairs: int, generators: Optional[Sequence[Optional[torch.Generator]]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i, j, usable) [B, P] token pairs per row: every ordered pair of distinct candidates when a row has at most
    max_pairs of them, else max_pairs pairs drawn uniformly (with replacement) among its candidates from
    generators[b]. Per row and in the order of its candidates, so that a row's pairs do not depend on what it is
    batched with or how it is padded."""
    rows = []
    for row in range(candidates.shape[0]):
        columns = candidates[row].nonzero().squeeze(1)
        c = columns.numel()
        if c * (c - 1) <= max_pairs:
            grid = torch.arange(c, device=candidates.device)
            i, j = grid.repeat_interleave(c), grid.repeat(c)
            distinct = i != j
            i, j = i[distinct], j[distinct]
        else:
            uniform = torch.ones(c, device=candidates.device)
            generator = generators[row] if generators is not None else None
            i = torch.multinomial(uniform, max_pairs, replacement=True, generator=generator)
            j = torch.multinomial(uniform, max_pairs, replacement=True, generator=generator)
        rows.append((columns[i], columns[j]))
    width = max(i.numel() for i, _ in rows)
    i, j, usable = (torch.zeros(len(rows), width, dtype=dtype, device=candidates.device)
                    for dtype in (torch.int64, torch.int64, torch.bool))
    for row, (row_i, row_j) in enumerate(rows):
        i[row, : row_i.numel()], j[row, : row_j.numel()] = row_i, row_j
        usable[row, : row_i.numel()] = row_i != row_j
    return i, j, usable


def ranking_loss(
    scores: torch.Tensor,
    saliency: torch.Tensor,
    candidates: torch.Tensor,
    max_pairs: int,
    generators: Optional[Sequence[Optional[torch.Generator]]] = None,
    normalizer: Normalizer = _own_count,
) -> torch.Tensor:
    """The paper's pairwise ranking loss log(1 + exp(-(s_i - s_j) * sign(sal_i - sal_j))), averaged (not summed, so
    that its scale does not grow with the sequence length) over candidate pairs with different saliency.
    `generators`: one per row, for sampled pairs."""
    i, j, usable = _pairs(candidates, max_pairs, generators)
    order = torch.sign(saliency.gather(1, i) - saliency.gather(1, j))
    usable = usable & (order != 0)
    loss = F.softplus(-(scores.gather(1, i) - scores.gather(1, j)) * order)
    return (loss * usable).sum() / normalizer(usable.sum().to(loss.dtype)).clamp_min(1)


def keep_ratio_loss(kept: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared gap between the fraction of the prompt each stage kept and the schedule's, averaged over stages and
    rows (DynamicViT's ratio loss). kept, target: [S, B]."""
    return (kept - target).pow(2).mean()
