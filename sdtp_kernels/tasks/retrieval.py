"""Seeded synthetic long-context retrieval task (key-value recall among filler) over a small integer vocabulary.

No tokenizer is needed: token ids are laid out in fixed ranges (see :class:`RetrievalTaskConfig`)::

    0 PAD   1 BOS   2 EOS   3 KEY (marks a pair in the context)   4 QUERY
    [5, 5 + n_keys)                      key tokens
    [.., .. + n_values)                  value tokens
    [.., .. + n_filler)                  filler (distractor) tokens

A prompt of exactly ``seq_len`` tokens is::

    BOS  f f f KEY k1 v1 f f ... f KEY k2 v2 f ... f   QUERY kA vA  QUERY kB vB ... QUERY kT
    |<---------------------- context ---------------------->|<-------- query section -------->|

``n_pairs`` pairs ``KEY k v`` sit at uniformly random, non-overlapping places of the context (distinct keys, distinct
values when possible), the rest is uniformly random filler. The query section asks ``n_queries`` distinct keys of
those pairs; all but the last are answered in place, the last one (``kT``) is the prompt's question and its value is
the answer: the next token after the prompt. The in-place answers are labelled too (``labels``), so that the
saliency of a model trained on every answer is marked with the loss it was trained on. The target pair is drawn
uniformly, so the answer may sit anywhere in the context, and pruning that does not look at content drops it with
the probability of dropping any token.

Pairs avoid the first ``head_margin`` tokens and the last ``ceil(tail_margin * seq_len)`` tokens of the prompt
(by default the attention-sink tokens and the local window that SDTP always keeps, docs/ARCHITECTURE.md §4:
``num_sink=4``, ``local_ratio=0.1``), so the answer is never protected by position alone.

Everything is deterministic in ``(seed, index)``: example ``i`` of a task is the same on every machine and run, and
the train / held-out splits are simply tasks with different seeds. The module depends on the standard library only.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Iterable, Iterator

PAD, BOS, EOS, KEY, QUERY = 0, 1, 2, 3, 4
IGNORE = -100  # label of a token that carries no loss
NUM_SPECIAL = 5
SPECIAL_NAMES = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>", KEY: "<key>", QUERY: "<query>"}


@dataclass(frozen=True)
class RetrievalTaskConfig:
    seq_len: int = 256  # prompt length in tokens (the answer is the token after it)
    n_pairs: int = 4  # key-value pairs in the context: the target and n_pairs - 1 distractors
    n_queries: int = 4  # queries in the query section; the last one is unanswered (the prompt's question)
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 128
    head_margin: int = 4  # no pair starts before this position
    tail_margin: float = 0.1  # no pair token in the last ceil(tail_margin * seq_len) prompt positions
    seed: int = 0

    def __post_init__(self):
        if self.n_pairs < 1 or self.n_queries < 1 or self.n_queries > self.n_pairs:
            raise ValueError(f"need 1 <= n_queries <= n_pairs, got n_queries={self.n_queries}, n_pairs={self.n_pairs}")
        if self.n_keys < self.n_pairs:
            raise ValueError(f"n_keys ({self.n_keys}) must be >= n_pairs ({self.n_pairs}): keys are distinct")
        if min(self.n_values, self.n_filler) < 1:
            raise ValueError("n_values and n_filler must be >= 1")
        if self.region()[1] - self.region()[0] < 3 * self.n_pairs:
            raise ValueError(
                f"seq_len={self.seq_len} too short for {self.n_pairs} pairs and {self.n_queries} queries "
                f"(head_margin={self.head_margin}, tail_margin={self.tail_margin})"
            )

    # ---- vocabulary layout ----
    @property
    def key_offset(self) -> int:
        return NUM_SPECIAL

    @property
    def value_offset(self) -> int:
        return NUM_SPECIAL + self.n_keys

    @property
    def filler_offset(self) -> int:
        return NUM_SPECIAL + self.n_keys + self.n_values

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + self.n_keys + self.n_values + self.n_filler

    @property
    def query_len(self) -> int:
        """Tokens of the query section in the prompt (the last answer is not part of the prompt)."""
        return 3 * self.n_queries - 1

    @property
    def query_start(self) -> int:
        """Position of the first QUERY token in the prompt."""
        return self.seq_len - self.query_len

    def region(self) -> tuple[int, int]:
        """Half-open range of prompt positions that pair tokens may occupy."""
        lo = max(1, self.head_margin)
        hi = min(self.query_start, self.seq_len - math.ceil(self.tail_margin * self.seq_len))
        return lo, hi

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(
            vocab_size=self.vocab_size,
            special_tokens={v: k for k, v in SPECIAL_NAMES.items()},
            key_range=[self.key_offset, self.key_offset + self.n_keys],
            value_range=[self.value_offset, self.value_offset + self.n_values],
            filler_range=[self.filler_offset, self.filler_offset + self.n_filler],
            query_start=self.query_start,
            pair_region=list(self.region()),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RetrievalTaskConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class RetrievalExample:
    input_ids: list[int]  # the prompt, seq_len tokens, ending with "QUERY kT"
    answer: list[int]  # the value token(s) that follow the prompt
    answer_position: int  # prompt position of the target value token in the context
    key_position: int  # prompt position of the target key token (answer_position - 1)
    pair_positions: list[int] = field(default_factory=list)  # positions of every KEY marker, ascending
    labels: list[int] = field(default_factory=list)  # per prompt token: the in-place answers' values, else -100
    index: int = 0
    seed: int = 0

    def full_sequence(self) -> list[int]:
        """Prompt followed by the answer: what a training step models (inputs [:-1], targets [1:])."""
        return self.input_ids + self.answer

    def to_record(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "answer": self.answer,
            "answer_position": self.answer_position,
            "key_position": self.key_position,
            "pair_positions": self.pair_positions,
            "labels": self.labels,
            "index": self.index,
            "seed": self.seed,
        }

    @classmethod
    def from_record(cls, r: dict) -> "RetrievalExample":
        return cls(
            input_ids=list(r["input_ids"]),
            answer=list(r["answer"]),
            answer_position=int(r.get("answer_position", -1)),
            key_position=int(r.get("key_position", -1)),
            pair_positions=list(r.get("pair_positions", [])),
            labels=list(r.get("labels", [])),
            index=int(r.get("index", 0)),
            seed=int(r.get("seed", 0)),
        )


class RetrievalTask:
    """Generator of :class:`RetrievalExample` s; ``task[i]`` is deterministic in ``(config.seed, i)``."""

    def __init__(self, config: RetrievalTaskConfig | None = None, **overrides):
        config = config or RetrievalTaskConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def example(self, index: int) -> RetrievalExample:
        c = self.config
        rng = random.Random(f"sdtp-retrieval:{c.seed}:{index}")
        lo, hi = c.region()
        # Non-overlapping 3-token slots, uniform placement (stars and bars over the free positions).
        free = (hi - lo) - 3 * c.n_pairs
        offsets = sorted(rng.randint(0, free) for _ in range(c.n_pairs))
        starts = [lo + off + 3 * i for i, off in enumerate(offsets)]
        keys = rng.sample(range(c.n_keys), c.n_pairs)
        if c.n_values >= c.n_pairs:
            values = rng.sample(range(c.n_values), c.n_pairs)
        else:
            values = [rng.randrange(c.n_values) for _ in range(c.n_pairs)]
        keys = [c.key_offset + k for k in keys]
        values = [c.value_offset + v for v in values]

        ids = [BOS] + [c.filler_offset + rng.randrange(c.n_filler) for _ in range(c.query_start - 1)]
        for s, k, v in zip(starts, keys, values):
            ids[s : s + 3] = [KEY, k, v]
        asked = rng.sample(range(c.n_pairs), c.n_queries)
        labels = [IGNORE] * len(ids)
        for j, p in enumerate(asked):
            in_place = [values[p]] if j < c.n_queries - 1 else []
            ids += [QUERY, keys[p]] + in_place
            labels += [IGNORE, IGNORE] + in_place
        assert len(ids) == c.seq_len, (len(ids), c.seq_len)
        target = asked[-1]
        return RetrievalExample(
            input_ids=ids,
            answer=[values[target]],
            answer_position=starts[target] + 2,
            key_position=starts[target] + 1,
            pair_positions=starts,
            labels=labels,
            index=index,
            seed=c.seed,
        )

    __getitem__ = example

    def examples(self, start: int, count: int) -> list[RetrievalExample]:
        return [self.example(i) for i in range(start, start + count)]

    def __iter__(self) -> Iterator[RetrievalExample]:
        i = 0
        while True:
            yield self.example(i)
            i += 1

    # ---- training targets ----
    def answer_target_positions(self) -> list[int]:
        """Positions t of the full sequence (prompt + answer) whose *next* token is a query's value.

        With inputs = full[:-1] and targets = full[1:], target index t predicts full[t + 1]; these are the
        positions of every key token in the query section (the last one is the prompt's final token).
        """
        qs = self.config.query_start
        return [qs + 3 * j + 1 for j in range(self.config.n_queries)]

    def query_target_positions(self) -> list[int]:
        """Target indices t (predicting full[t + 1]) covering every token of the query section after the first."""
        return list(range(self.config.query_start, self.config.seq_len))

    # ---- debugging ----
    def token_names(self) -> list[str]:
        """The name of every token id, in id order: <pad> <bos> <eos> <key> <query>, keys k0.., values v0..,
        filler f0... The reference model's tokenizer is this vocabulary, words split on whitespace."""
        c = self.config
        return ([SPECIAL_NAMES[t] for t in range(NUM_SPECIAL)] + [f"k{i}" for i in range(c.n_keys)]
                + [f"v{i}" for i in range(c.n_values)] + [f"f{i}" for i in range(c.n_filler)])

    def decode(self, ids: Iterable[int]) -> str:
        names = self.token_names()
        return " ".join(names[t] if 0 <= t < len(names) else f"?{t}" for t in ids)


def write_jsonl(
    path: str | os.PathLike, examples: Iterable[RetrievalExample], config: RetrievalTaskConfig | None = None
) -> int:
    """Write one JSON record per example (``input_ids``, ``answer``, positions); returns the count.

    When ``config`` is given, ``<path>.task.json`` describing the generator is written next to it.
    """
    n = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_record(), separators=(",", ":")) + "\n")
            n += 1
    if config is not None:
        with open(str(path) + ".task.json", "w") as f:
            json.dump(config.to_dict(), f, indent=2)
    return n


def read_jsonl(path: str | os.PathLike) -> list[RetrievalExample]:
    with open(path) as f:
        return [RetrievalExample.from_record(json.loads(line)) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """``python -m sdtp_kernels.tasks.retrieval --out FILE.jsonl --count N [--seed S] [--seq-len L] ...``"""
    import argparse

    from ..arguments import existing_file, non_negative_int, positive_int, reporting_bad_input

    prog = "python -m sdtp_kernels.tasks.retrieval"
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=positive_int, default=1000)
    p.add_argument("--start", type=non_negative_int, default=0)
    p.add_argument("--task-json", type=existing_file,
                   help="take the generator settings from a task.json (e.g. sdtp_kernels/models/reference/task.json)")
    for f in dataclasses.fields(RetrievalTaskConfig):  # checked by RetrievalTaskConfig
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    a = p.parse_args(argv)
    return reporting_bad_input(prog, lambda: _write(a))


def _write(a) -> int:
    base = RetrievalTaskConfig()
    if a.task_json:
        with open(a.task_json) as fh:
            d = json.load(fh)
        base = RetrievalTaskConfig.from_dict(d.get("task", d))
    over = {f.name: getattr(a, f.name) for f in dataclasses.fields(RetrievalTaskConfig)
            if getattr(a, f.name) is not None}
    task = RetrievalTask(base, **over)
    n = write_jsonl(a.out, task.examples(a.start, a.count), task.config)
    print(f"wrote {n} examples to {a.out} (vocab_size={task.vocab_size}, seq_len={task.config.seq_len})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
