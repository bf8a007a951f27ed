"""Evaluation prompts: held-out prompts of a retrieval task (a task.json) or of a JSON Lines file, and their
left-padded batches."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, Optional, Sequence

import torch

from ..tasks.retrieval import IGNORE, RetrievalExample, RetrievalTask, RetrievalTaskConfig


@dataclasses.dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    answer: int  # the token that should follow the prompt
    answer_position: Optional[int] = None  # where the answer sits in the prompt's context, if known
    labels: Optional[list[int]] = None  # per prompt token: labelled tokens inside the prompt (-100 = none), if any
    source: str = "a prompt"  # where it was read, for errors


def check_vocabulary(prompts: Sequence[Prompt], vocab_size: int) -> None:
    """Refuse a token id or label outside the model's vocabulary, naming its prompt, before any forward (the
    embedding would fail without a location, on CUDA with a device-side assert; a label, after the whole sweep)."""
    for prompt in prompts:
        labels = [t for t in prompt.labels or () if t != IGNORE]
        for what, ids in (("token id", (*prompt.input_ids, prompt.answer)), ("label", labels)):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{prompt.source}: {what} {bad[0]} is outside the model's vocabulary "
                                 f"(0..{vocab_size - 1})")


def read_task(task_json: str) -> tuple[RetrievalTaskConfig, int]:
    """(RetrievalTaskConfig, held-out seed) of a task.json: its ``heldout_seed``, or without one the task seed +
    1000003, so never the training examples."""
    with open(task_json) as f:
        description = json.load(f)
    config = RetrievalTaskConfig.from_dict(description.get("task", description))
    return config, int(description.get("heldout_seed", config.seed + 1000003))


def example_prompts(examples: Sequence[RetrievalExample]) -> list[Prompt]:
    """Retrieval examples as prompts, with their answers, answer positions and labels."""
    return [Prompt(e.input_ids, e.answer[0], e.answer_position, e.labels) for e in examples]


def retrieval_prompts(task: RetrievalTask, count: int, start: int = 0) -> list[Prompt]:
    """Prompts start..start + count - 1 of a retrieval task."""
    return example_prompts(task.examples(start, count))


def task_prompts(task_json: str, count: int, start: int = 0, seq_len: Optional[int] = None) -> list[Prompt]:
    """Held-out prompts of the retrieval task described by a task.json (`read_task`); `seq_len` overrides the task's
    prompt length."""
    config, seed = read_task(task_json)
    task = RetrievalTask(config, seed=seed, **({"seq_len": seq_len} if seq_len else {}))
    return retrieval_prompts(task, count, start)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def file_prompts(path: str, count: Optional[int] = None, start: int = 0) -> list[Prompt]:
    """Prompts of a JSON Lines file: ``input_ids`` (the prompt) and ``answer`` (a token id, or a list whose first
    entry is the next token); ``answer_position`` and ``labels`` (one per prompt token, for marking) optional."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    prompts = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} is not valid JSON: {e}") from None
            if not isinstance(record, dict) or "input_ids" not in record or "answer" not in record:
                raise ValueError(f"{where}: an evaluation record needs `input_ids` and `answer`")
            answer = record["answer"]
            answer = answer[0] if isinstance(answer, list) and answer else answer
            ids = record["input_ids"]
            if not (_is_int(answer) and isinstance(ids, list) and ids and all(_is_int(t) for t in ids)):
                raise ValueError(f"{where}: `input_ids` must be a non-empty list of ints and `answer` an int")
            position = record.get("answer_position")
            if position is not None and not (_is_int(position) and position < len(ids)):
                raise ValueError(f"{where}: `answer_position` must be an int below the prompt's {len(ids)} tokens "
                                 f"(negative or absent: unknown), got {position!r}")
            labels = record.get("labels")
            if labels is not None and not (isinstance(labels, list) and len(labels) == len(ids)
                                           and all(_is_int(t) and (t >= 0 or t == IGNORE) for t in labels)):
                raise ValueError(f"{where}: `labels` must be a list of token ids (or -100) with one entry per "
                                 "`input_ids` token")
            prompts.append(Prompt(ids, answer, None if position is None or position < 0 else position, labels, where))
    prompts = prompts[start:]
    return prompts if count is None else prompts[:count]


@dataclasses.dataclass
class PromptBatch:
    input_ids: torch.Tensor  # [B, N], left-padded with 0
    attention_mask: torch.Tensor  # [B, N]
    answers: torch.Tensor  # [B]
    answer_columns: torch.Tensor  # [B] column of the answer's context token in the padded row, -1 where unknown


def prompt_batches(prompts: Sequence[Prompt], batch_size: int, device: torch.device) -> Iterator[PromptBatch]:
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        width = max(len(p.input_ids) for p in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.int64)
        mask = torch.zeros(len(chunk), width, dtype=torch.int64)
        for row, p in enumerate(chunk):
            ids[row, width - len(p.input_ids) :] = torch.tensor(p.input_ids)
            mask[row, width - len(p.input_ids) :] = 1
        columns = torch.tensor([-1 if p.answer_position is None else width - len(p.input_ids) + p.answer_position
                                for p in chunk])
        answers = torch.tensor([p.answer for p in chunk])
        yield PromptBatch(ids.to(device), mask.to(device), answers.to(device), columns.to(device))

