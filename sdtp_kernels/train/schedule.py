"""The SDTP schedule applied to a training batch: which tokens no stage may drop, and how many each stage keeps."""
from __future__ import annotations

import torch

from ..config import SDTPConfig


def protected_tokens(config: SDTPConfig, prompt_mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """[B, N] bool: the tokens every stage keeps. Those of the prompt that inference protects (the first num_sink and
    the last ceil(local_ratio * L) of its L tokens), and every real token outside the prompt (an answer: at
    inference it is generated, never pruned)."""
    lengths = prompt_mask.sum(1, keepdim=True)
    local = torch.tensor([[config.local_count(n)] for n in lengths.squeeze(1).tolist()], device=prompt_mask.device)
    rank = prompt_mask.long().cumsum(1) - 1  # each token's place among its row's prompt tokens
    protected = prompt_mask & ((rank < config.num_sink) | (rank >= lengths - local))
    return protected | (real.bool() & ~prompt_mask)


def has_prunable_tokens(config: SDTPConfig, prompt_length: int) -> bool:
    """Whether a prompt of this length holds a token that no stage protects, i.e. something to rank and prune."""
    return config.num_sink + config.local_count(prompt_length) < prompt_length


def describe_skipped(skipped: list[str]) -> str:
    """One line for the log: how many records were skipped, why, and the first few of them (their locations)."""
    shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    return (f"{len(skipped)} record(s) whose prompt has no token outside the protected ones (the first num_sink and "
            f"the last ceil(local_ratio * L)), so nothing to rank or prune: {shown}")


def keep_fractions(config: SDTPConfig, prompt_mask: torch.Tensor, num_stages: int) -> torch.Tensor:
    """[S, B] float: the fraction of each row's prompt that stage s = 1..S keeps at inference."""
    lengths = prompt_mask.sum(1).tolist()
    fractions = [[config.kept_count(n, s) / n for n in lengths] for s in range(1, num_stages + 1)]
    return torch.tensor(fractions, device=prompt_mask.device)
