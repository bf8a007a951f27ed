"""The host side of one engine step of an SDTP model (docs/ARCHITECTURE.md §7.3): for every row of the flat token
batch, which request it is, where its tokens are, and how many tokens each stage's layers hold of it.

Per-request state is the list of kept counts of stages 0..S (stage 0: the prompt), stored on the runner's own
record of the request (`CachedRequestState`) under `KEPT_ATTRIBUTE`: it lives exactly as long as the runner keeps
the request (dropped when it finishes or is aborted, kept across preemption), and needs no bookkeeping of ours."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..config import SDTPConfig

KEPT_ATTRIBUTE = "sdtp_kept"
"""Attribute of a runner's CachedRequestState: kept counts of stages 0..S, or None for a request run unpruned."""


def kept_counts(request) -> Optional[list[int]]:
    return getattr(request, KEPT_ATTRIBUTE, None)


class StepPlan:
    """Rows of one step. A row is either a first pass over its request (`computed == 0`: the prompt, followed by
    the tokens it had generated when a preempted request is recomputed) or a decode step (one new token). A first
    pass prunes the prompt part only; generated tokens, like decode tokens, reach every layer."""

    def __init__(self, runner, config: SDTPConfig, num_stages: int, num_tokens: int):
        batch = runner.input_batch
        n = batch.num_reqs
        self.num_reqs = n
        self.num_stages = num_stages
        starts = runner.query_start_loc.np[: n + 1].astype(np.int64)
        self.query_lens = np.diff(starts)
        if int(starts[-1]) != num_tokens:
            raise RuntimeError(f"SDTP: the step holds {num_tokens} tokens but its requests {int(starts[-1])}; a "
                               "padded batch (CUDA graphs, data parallel padding) cannot be pruned")
        computed = batch.num_computed_tokens_cpu[:n].astype(np.int64)
        self.seq_lens = computed + self.query_lens
        # Per row, the tokens of stages 0..S in its query and in its KV (context + query).
        self.query = np.repeat(self.query_lens[None, :], num_stages + 1, axis=0)
        self.context = np.repeat(self.seq_lens[None, :], num_stages + 1, axis=0)
        self.local = self.query_lens.copy()  # tokens select_tokens must keep at the end of a row
        self.first_pass = computed == 0
        self.pruned_rows: list[int] = []
        for r, req_id in enumerate(batch.req_ids[:n]):
            request = runner.requests[req_id]
            prompt = request.num_prompt_tokens
            if self.first_pass[r]:
                # Decided once per request: a recompute after preemption prunes the same prompt with the same counts,
                # or runs unpruned again (the runner forgets a request's prompt_logprobs once they are sent).
                if not hasattr(request, KEPT_ATTRIBUTE):
                    counts = None
                    if req_id not in runner.num_prompt_logprobs:  # those need every prompt token at the last layer
                        counts = [prompt] + [config.kept_count(prompt, s) for s in range(1, num_stages + 1)]
                        # Nothing removed at any stage: the request runs exactly as without SDTP.
                        counts = counts if counts[-1] < prompt else None
                    setattr(request, KEPT_ATTRIBUTE, counts)
                counts = kept_counts(request)
                if counts is None:
                    continue
                generated = int(self.query_lens[r]) - prompt
                if generated < 0:  # engine_checks refuses the settings that cut a prompt; a last guard
                    raise RuntimeError(f"SDTP: request {req_id}'s first pass holds {self.query_lens[r]} of its "
                                       f"{prompt} prompt tokens (a split prompt), which pruning does not support")
                self.query[:, r] = np.asarray(counts) + generated
                self.context[:, r] = self.query[:, r]
                self.local[r] = config.local_count(prompt) + generated
                self.pruned_rows.append(r)
            else:
                if self.query_lens[r] != 1:
                    raise RuntimeError(f"SDTP: request {req_id} continues with {self.query_lens[r]} tokens at once "
                                       "(a split prompt or speculative tokens), which pruning does not support")
                counts = kept_counts(request)
                if counts is None:
                    continue
                # Its pruned layers hold the kept prompt tokens and every generated one, compacted.
                self.context[:, r] = self.seq_lens[r] - (prompt - np.asarray(counts))
                self.pruned_rows.append(r)
        self.starts = starts
        self.active = bool(self.pruned_rows)
        self.prunes = bool(self.first_pass[self.pruned_rows].any()) if self.active else False

    def query_starts(self, stage: int) -> np.ndarray:
        """[num_reqs + 1] start of each row's tokens in the packed batch of `stage`."""
        return np.concatenate([[0], np.cumsum(self.query[stage])]).astype(np.int64)

    def kv_indices(self, stage: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, index in the row's compacted KV) of every token that `stage`'s layers hold, in batch order."""
        query, context = self.query[stage], self.context[stage]
        rows = np.repeat(np.arange(self.num_reqs), query)
        within = np.arange(int(query.sum())) - np.repeat(self.query_starts(stage)[:-1], query)
        return rows, (context - query)[rows] + within
