"""The files training and marking data come in, read in file order or one record at a time by its number:

- ``*.jsonl`` (one JSON object a line): read here; only each line's byte offset is remembered, and a record read by
  number is read again from its line;
- ``*.json`` (a list of objects): read here, whole (use JSONL or a table for data larger than memory);
- ``*.parquet`` and ``*.arrow`` files and folders written by the `datasets` library's ``save_to_disk``, read through
  `datasets` (the optional extra ``sdtp_kernels[data]``), memory-mapped: only the rows being read are in memory.

The location ("data.jsonl line 3", "corpus.parquet row 2") is what every error about a record names.
"""
from __future__ import annotations

import json
import os
from array import array
from typing import Any, Iterator

TABLE_SUFFIXES = (".parquet", ".arrow")
FORMATS = "a .jsonl or .json file, a .parquet or .arrow file, or a folder written by datasets' save_to_disk"


class RecordFile:
    """The records of one data file or folder: `records()` in file order, `record(number)` any one again."""

    def __init__(self, path: str):
        self.path = path
        self._table = None  # a datasets.Dataset (memory-mapped)
        self._list = None  # the records of a .json list
        self._offsets = array("q")  # JSONL: byte offset and line number of each record, filled by records()
        self._lines = array("q")
        self._version = None  # JSONL: (size, mtime) when records() read it
        if os.path.isdir(path):
            self._table = _load_from_disk(path)
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"data {path} does not exist; expected {FORMATS}")
        elif path.endswith(TABLE_SUFFIXES):
            datasets = _datasets(path)
            self._table = _python_rows(datasets.Dataset.from_file(path) if path.endswith(".arrow")
                                       else datasets.Dataset.from_parquet(path))
        elif not path.endswith(".jsonl"):
            self._list = _json_list(path)

    def records(self) -> Iterator[tuple[int, str, Any]]:
        """(record number, location, record) of every record, in file order."""
        if self._table is not None:
            for number, row in enumerate(self._table):
                yield number, f"{self.path} row {number}", _table_record(row)
        elif self._list is not None:
            for number, record in enumerate(self._list):
                yield number, f"{self.path} record {number}", record
        else:
            yield from self._jsonl_records()

    def record(self, number: int) -> tuple[str, Any]:
        """(location, record) of record `number`, read again (for JSONL, after records() has passed it)."""
        if self._table is not None:
            return f"{self.path} row {number}", _table_record(self._table[number])
        if self._list is not None:
            return f"{self.path} record {number}", self._list[number]
        with open(self.path, "rb") as f:
            if _version(f) != self._version:  # the offsets would point into other records
                raise RuntimeError(f"{self.path} changed since it was read; restart to read it again")
            f.seek(self._offsets[number])
            return self._parse(self._lines[number], f.readline())

    def _jsonl_records(self) -> Iterator[tuple[int, str, Any]]:
        self._offsets, self._lines = array("q"), array("q")
        offset = 0
        with open(self.path, "rb") as f:
            self._version = _version(f)
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    self._offsets.append(offset)
                    self._lines.append(line_number)
                    yield len(self._offsets) - 1, *self._parse(line_number, line)
                offset += len(line)

    def _parse(self, line_number: int, line: bytes) -> tuple[str, Any]:
        where = f"{self.path} line {line_number}"
        try:
            return where, json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{where} is not valid JSON: {e}") from None


def _datasets(path: str):
    try:
        import datasets
    except ImportError:
        raise ImportError(f"reading {path} needs the `datasets` package (Parquet, Arrow and save_to_disk data): "
                          "pip install 'sdtp_kernels[data]'") from None
    datasets.disable_progress_bars()  # training's own progress bar is the one to watch
    return datasets


def _load_from_disk(path: str):
    datasets = _datasets(path)
    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"data folder {path} was not written by datasets' save_to_disk (no dataset_info.json "
                                f"or dataset_dict.json); expected {FORMATS}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise ValueError(f"{path} holds the splits {sorted(loaded)}; pass the folder of one of them "
                             f"(e.g. {os.path.join(path, sorted(loaded)[0])})")
        loaded = next(iter(loaded.values()))
    return _python_rows(loaded)


def _python_rows(table):
    # A dataset saved after set_format("torch" / "numpy") comes back in that format; records are read as Python
    # lists and numbers whatever format it was saved in.
    return table.with_format(None)


def _version(f) -> tuple[int, int]:
    stat = os.fstat(f.fileno())
    return stat.st_size, stat.st_mtime_ns


def _table_record(row: dict[str, Any]) -> dict[str, Any]:
    # A table has one schema for all rows: a field a row does not have is a null there, not part of the record.
    return {name: value for name, value in row.items() if value is not None}


def _json_list(path: str) -> list:
    with open(path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); JSON Lines data must be named *.jsonl, and the "
                             f"other formats are {FORMATS}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records, got a {type(records).__name__}")
    return records
