"""Training and marking data: records of a local file (`data_files`: JSON / JSONL, Parquet, Arrow, datasets'
save_to_disk) turned into token ids, labels and a prompt length, then batched with left padding.

Accepted records (other fields are ignored, so generator metadata may ride along):

- ``{"input_ids": [...]}``: pre-tokenised, loss on every token; needs no tokenizer (a ``text`` or ``prompt``
  beside the ids is ignored: the usual shape of a tokenised corpus that kept its text column);
- ``{"input_ids": [...], "labels": [...]}``: per-token labels (``-100`` = no loss), the model shifts them;
- ``{"input_ids": [...], "answer": [...] or int}``: the answer tokens follow the prompt and carry the loss;
- ``{"input_ids": [...], "labels": [...], "answer": [...]}``: both; ``labels`` (one per prompt token) label tokens
  inside the prompt as well, e.g. answers given in place earlier in a multi-question prompt;
- ``{"text": "..."}``: tokenised with the model directory's tokenizer, loss on every token (``text_field`` names
  another field for it);
- ``{"prompt": "...", "response": "..."}``: tokenised likewise, loss on the response.

The *prompt* is what SDTP prunes. An answer or response plays the part of generated tokens: it is never pruned and
is not counted in the row's prompt length L that sets each stage's kept count. Without one the whole record is the
prompt.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Optional, Sequence

import torch

from .data_files import RecordFile

IGNORE_INDEX = -100
TEXT_FIELD = "text"


def _accepted(text_field: str) -> str:
    return f"`input_ids` (optionally with `labels` and/or `answer`), `{text_field}`, or `prompt` with `response`"


@dataclasses.dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # label of each token (IGNORE_INDEX = no loss); token i is predicted from the tokens before it
    prompt_length: int  # the first prompt_length tokens are the prunable prompt
    source: str = ""  # where the record came from ("data.jsonl line 3"), for messages


@dataclasses.dataclass
class Batch:
    """Left-padded rows. `prompt_mask` marks the prompt tokens of each row (real tokens not in an answer)."""

    input_ids: torch.Tensor  # [B, N] int64
    attention_mask: torch.Tensor  # [B, N] int64, 0 = padding
    labels: torch.Tensor  # [B, N] int64
    prompt_mask: torch.Tensor  # [B, N] bool
    records: list[int]  # the record number (0-based, file order) of each row

    def to(self, device: torch.device) -> "Batch":
        tensors = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if f.name != "records"}
        return Batch(**tensors, records=self.records)


class _Tokenizer:
    """The model directory's tokenizer, loaded on the first text record (input_ids data never needs one)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self._tokenizer = None

    def __call__(self, where: str, text: str, special_tokens: bool) -> list[int]:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"{where} holds text, but no tokenizer could be loaded from {self.model_dir} ({e}); "
                    "give the records as pre-tokenised `input_ids` instead"
                ) from None
        return self._tokenizer(text, add_special_tokens=special_tokens)["input_ids"]


def _token_ids(where: str, name: str, value, vocab_size: int, allow_ignore: bool = False) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ValueError(f"{where}: `{name}` must be a list of token ids (ints)")
    bad = [t for t in value if not (0 <= t < vocab_size or (allow_ignore and t == IGNORE_INDEX))]
    if bad:
        allowed = f"0..{vocab_size - 1}" + (f" or {IGNORE_INDEX}" if allow_ignore else "")
        raise ValueError(f"{where}: `{name}` holds {bad[0]}, outside the model's vocabulary ({allowed})")
    return value


def _example(where: str, record, tokenize: _Tokenizer, vocab_size: int, text_field: str) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with {_accepted(text_field)}, got a "
                         f"{type(record).__name__}")
    # Pre-tokenised ids win: a tokenised corpus that kept its text column trains on the ids, the text ignored.
    kinds = ["input_ids"] if "input_ids" in record else [k for k in dict.fromkeys((text_field, "prompt"))
                                                         if k in record]
    if len(kinds) != 1:
        found = "none of them" if not kinds else " and ".join(f"`{k}`" for k in kinds)
        raise ValueError(f"{where}: a record holds one of {_accepted(text_field)}; this one has {found} "
                         f"(fields: {sorted(record)})")
    if "input_ids" in record:
        ids = _token_ids(where, "input_ids", record["input_ids"], vocab_size)
        if "labels" in record:
            labels = _token_ids(where, "labels", record["labels"], vocab_size, allow_ignore=True)
            if len(labels) != len(ids):
                raise ValueError(f"{where}: `labels` has {len(labels)} entries for {len(ids)} `input_ids`")
        elif "answer" in record:
            labels = [IGNORE_INDEX] * len(ids)  # the loss is on the answer only
        else:
            labels = list(ids)
        answer = _token_ids(where, "answer", record["answer"], vocab_size) if "answer" in record else []
        return Example(ids + answer, labels + answer, len(ids))
    if text_field in record and not (text_field == "prompt" and "response" in record):
        ids = _token_ids(where, text_field, tokenize(where, _string(where, record, text_field), True), vocab_size)
        return Example(ids, list(ids), len(ids))
    if "response" not in record:
        raise ValueError(f"{where}: a `prompt` record needs a `response` (the tokens that carry the loss)")
    prompt = _token_ids(where, "prompt", tokenize(where, _string(where, record, "prompt"), True), vocab_size)
    response = _token_ids(where, "response", tokenize(where, _string(where, record, "response"), False), vocab_size)
    return Example(prompt + response, [IGNORE_INDEX] * len(prompt) + response, len(prompt))


def _string(where: str, record: dict, name: str) -> str:
    if not isinstance(record[name], str):
        raise ValueError(f"{where}: `{name}` must be a string")
    return record[name]


def bos_token_id(model_config) -> Optional[int]:
    """The model's beginning-of-sequence token, None where its config names none."""
    value = getattr(model_config, "bos_token_id", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _truncate(example: Example, max_length: Optional[int], bos: Optional[int]) -> Example:
    # Keep the end, where answers and the prompt's question sit, and a leading BOS: prompts at inference start with
    # it (the usual attention sink, among the protected tokens), so training and marking must see it too.
    ids = example.input_ids
    if max_length is None or len(ids) <= max_length:
        return example
    head = 1 if max_length > 1 and bos is not None and ids[0] == bos else 0
    tail = len(ids) - (max_length - head)  # tokens [head, tail) are cut
    prompt_length = min(head, example.prompt_length) + max(0, example.prompt_length - tail)
    return dataclasses.replace(example, input_ids=ids[:head] + ids[tail:],
                               labels=example.labels[:head] + example.labels[tail:], prompt_length=prompt_length)


def read_examples(path: str, model_dir: str, vocab_size: int, max_length: Optional[int] = None,
                  text_field: str = TEXT_FIELD, bos: Optional[int] = None) -> Iterator[Example]:
    """Examples of a data file or folder (`data_files`), in file order, streamed. `max_length` keeps each record's
    last tokens (and its first, if that is `bos`, the model's `bos_token_id`); `text_field` is the field of text
    records."""
    reader = ExampleReader(model_dir, vocab_size, max_length, text_field, bos)
    for _, where, record in RecordFile(path).records():
        yield reader(where, record)


class ExampleReader:
    """One record (with its location) -> its checked Example; a bad record raises naming its location."""

    def __init__(self, model_dir: str, vocab_size: int, max_length: Optional[int] = None,
                 text_field: str = TEXT_FIELD, bos: Optional[int] = None):
        self.tokenize = _Tokenizer(model_dir)
        self.vocab_size, self.max_length, self.text_field, self.bos = vocab_size, max_length, text_field, bos

    def __call__(self, where: str, record) -> Example:
        return check_trainable(self.read(where, record))

    def read(self, where: str, record) -> Example:
        """The record's Example, its tokens and fields checked, but not yet whether it has a prompt and a loss
        (`check_trainable`): `ExampleIndex` first skips what has nothing to prune, an empty record included."""
        example = _example(where, record, self.tokenize, self.vocab_size, self.text_field)
        return _truncate(dataclasses.replace(example, source=where), self.max_length, self.bos)


def check_trainable(example: Example) -> Example:
    """`example` if it has a prompt token and a labelled token after the first; raises naming its source if not."""
    if not example.input_ids:
        raise ValueError(f"{example.source}: the record holds no token")
    if example.prompt_length == 0:
        raise ValueError(f"{example.source}: no prompt token left to prune (answer only, or cut away by max_length)")
    if all(label == IGNORE_INDEX for label in example.labels[1:]):
        raise ValueError(
            f"{example.source}: no labelled token after the first, so there is no LM loss to compute (the first "
            "token is never predicted)"
        )
    return example


def collate(examples: Sequence[Example], records: Sequence[int]) -> Batch:
    """Left-pad to the longest row (padding id 0, masked out), as HF generation pads prompts."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.zeros(len(examples), width, dtype=torch.int64)
    attention_mask = torch.zeros(len(examples), width, dtype=torch.int64)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.int64)
    prompt_mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for row, example in enumerate(examples):
        start = width - len(example.input_ids)
        input_ids[row, start:] = torch.tensor(example.input_ids)
        attention_mask[row, start:] = 1
        # A row's first token is never predicted: its label would sit on the padding before it after the shift.
        labels[row, start + 1 :] = torch.tensor(example.labels[1:], dtype=torch.int64)
        prompt_mask[row, start : start + example.prompt_length] = True
    return Batch(input_ids, attention_mask, labels, prompt_mask, list(records))


def batches(examples: Iterable[Example], batch_size: int) -> Iterator[Batch]:
    """Consecutive records in batches of `batch_size` (the last may be smaller), for one pass in file order."""
    chunk: list[Example] = []
    first = 0
    for example in examples:
        chunk.append(example)
        if len(chunk) == batch_size:
            yield collate(chunk, range(first, first + len(chunk)))
            first += len(chunk)
            chunk = []
    if chunk:
        yield collate(chunk, range(first, first + len(chunk)))


class BatchOrder:
    """Which records every process trains on at each step. Epoch e visits the records in a permutation seeded by
    (seed, e), in global batches of batch_size * world_size (an incomplete last batch is skipped); process `rank`
    takes its slice. A pure function of the step, so the data position of a checkpoint is its step."""

    def __init__(self, num_records: int, batch_size: int, world_size: int, rank: int, seed: int):
        self.global_batch = batch_size * world_size
        if num_records < self.global_batch:
            raise ValueError(
                f"the data has {num_records} records, fewer than one global batch of {self.global_batch} "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.batches_per_epoch = num_records // self.global_batch
        self.num_records, self.batch_size, self.rank, self.seed = num_records, batch_size, rank, seed
        self._epoch: Optional[int] = None
        self._permutation: list[int] = []

    def position(self, step: int) -> dict[str, int]:
        """The epoch and the batch within it that step `step` (0-based) trains on."""
        return {"epoch": step // self.batches_per_epoch, "batch": step % self.batches_per_epoch}

    def records(self, step: int) -> list[int]:
        position = self.position(step)
        if position["epoch"] != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + position["epoch"])
            self._epoch = position["epoch"]
            self._permutation = torch.randperm(self.num_records, generator=generator).tolist()
        start = position["batch"] * self.global_batch + self.rank * self.batch_size
        return self._permutation[start : start + self.batch_size]
