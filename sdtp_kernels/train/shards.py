"""The on-disk form of a marking: safetensors shards written as marking goes (the data may not fit in memory), read
back lazily one record at a time.

A marking directory holds `saliency-00000.safetensors`, ... and, once complete, `marking.json` (the index: stage
layers, saliency options, model, data, and which records each shard holds). Shard k holds consecutive records of
the data file, concatenated: `input_ids` [T] int64, `saliency` [S, T] float32 and `offsets` [R + 1] int64 (record r
of the shard spans offsets[r]:offsets[r + 1]). Its safetensors metadata repeats the saliency options.
"""
from __future__ import annotations

import bisect
import json
import os
from typing import Any

import torch
from safetensors import safe_open

from ..files import save_safetensors
from .data import Batch

INDEX_FILE = "marking.json"
FORMAT = "sdtp-saliency/1"


class ShardWriter:
    """Collects records and writes a shard every `records_per_shard`; `close()` writes the last one and the index."""

    def __init__(self, directory: str, metadata: dict[str, Any], records_per_shard: int):
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        os.makedirs(directory, exist_ok=True)
        # A stale index would describe shards about to be overwritten.
        if os.path.exists(os.path.join(directory, INDEX_FILE)):
            os.remove(os.path.join(directory, INDEX_FILE))
        self.directory, self.metadata, self.records_per_shard = directory, metadata, records_per_shard
        self.shards: list[dict[str, Any]] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._records = 0

    def add(self, input_ids: torch.Tensor, saliency: torch.Tensor) -> None:
        """One record: input_ids [n], saliency [S, n]."""
        self._pending.append((input_ids.cpu(), saliency.float().cpu()))
        if len(self._pending) == self.records_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        lengths = torch.tensor([ids.numel() for ids, _ in self._pending])
        name = f"saliency-{len(self.shards):05d}.safetensors"
        tensors = {
            "input_ids": torch.cat([ids for ids, _ in self._pending]),
            "saliency": torch.cat([s for _, s in self._pending], dim=1).contiguous(),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
        }
        save_safetensors(tensors, os.path.join(self.directory, name), metadata={"saliency": json.dumps(self.metadata)})
        self.shards.append({"file": name, "first_record": self._records, "records": len(self._pending)})
        self._records += len(self._pending)
        self._pending = []

    def close(self) -> dict[str, Any]:
        self._flush()
        index = {"format": FORMAT, **self.metadata, "records": self._records, "shards": self.shards}
        with open(os.path.join(self.directory, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)
        return index


class SaliencyShards:
    """Random access to a marking: `shards[r]` = (input_ids [n], saliency [S, n]) of record r, read from disk."""

    def __init__(self, directory: str):
        path = os.path.join(directory, INDEX_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory} holds no complete marking ({INDEX_FILE} is missing); run `sdtp mark` to write one"
            )
        with open(path) as f:
            self.index = json.load(f)
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{path} is not a marking of format {FORMAT} (format: {self.index.get('format')!r})")
        self.directory = directory
        self._firsts = [shard["first_record"] for shard in self.index["shards"]]
        self._open: dict[int, Any] = {}
        self._offsets: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.index["records"]

    def __getitem__(self, record: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= record < len(self):
            raise IndexError(f"record {record} is outside the marking's {len(self)} records")
        k = bisect.bisect_right(self._firsts, record) - 1
        if k not in self._open:
            self._open[k] = safe_open(os.path.join(self.directory, self.index["shards"][k]["file"]), framework="pt")
            self._offsets[k] = self._open[k].get_tensor("offsets")
        r = record - self._firsts[k]
        start, end = self._offsets[k][r].item(), self._offsets[k][r + 1].item()
        shard = self._open[k]
        return shard.get_slice("input_ids")[start:end], shard.get_slice("saliency")[:, start:end]


def batch_saliency(shards: SaliencyShards, batch: Batch) -> torch.Tensor:
    """[S, B, N] marked saliency of a batch's records, left-padded like the batch (0 at padding). Each record's
    tokens must be those that were marked."""
    rows = []
    for row, record in enumerate(batch.records):
        real = batch.attention_mask[row].bool()
        input_ids, saliency = shards[record]
        if not torch.equal(input_ids, batch.input_ids[row][real].cpu()):
            raise ValueError(
                f"record {record} of the training data is not the record {record} that {shards.directory} marked; "
                "mark this data file again (with the same --max-length)"
            )
        padded = torch.zeros(saliency.shape[0], real.numel())
        padded[:, real.cpu()] = saliency
        rows.append(padded)
    return torch.stack(rows, 1).to(batch.input_ids.device)
