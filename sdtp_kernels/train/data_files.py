"""The files training and marking data come in, read as a stream of (location, record dict) in file order:

- ``*.jsonl`` (one JSON object a line) and ``*.json`` (a list of objects), read here;
- ``*.parquet`` and ``*.arrow`` files and folders written by the `datasets` library's ``save_to_disk``, read through
  `datasets` (the optional extra ``sdtp_kernels[data]``), memory-mapped: only the rows being read are in memory.

The location ("data.jsonl line 3", "corpus.parquet row 2") is what every error about a record names.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

TABLE_SUFFIXES = (".parquet", ".arrow")
FORMATS = "a .jsonl or .json file, a .parquet or .arrow file, or a folder written by datasets' save_to_disk"


def data_records(path: str) -> Iterator[tuple[str, dict]]:
    """(location for error messages, record) of every record of `path`, in file order."""
    if os.path.isdir(path):
        yield from _table_records(path, _load_from_disk(path))
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"data {path} does not exist; expected {FORMATS}")
    elif path.endswith(TABLE_SUFFIXES):
        datasets = _datasets(path)
        table = datasets.Dataset.from_file(path) if path.endswith(".arrow") else datasets.Dataset.from_parquet(path)
        yield from _table_records(path, table)
    else:
        yield from _json_records(path)


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
    return loaded


def _table_records(path: str, table) -> Iterator[tuple[str, dict[str, Any]]]:
    # A table has one schema for all rows: a field a row does not have is a null there, not part of the record.
    for number, row in enumerate(table):
        yield f"{path} row {number}", {name: value for name, value in row.items() if value is not None}


def _json_records(path: str) -> Iterator[tuple[str, Any]]:
    if path.endswith(".jsonl"):
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    where = f"{path} line {number}"
                    try:
                        yield where, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{where} is not valid JSON: {e}") from None
        return
    with open(path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); JSON Lines data must be named *.jsonl, and the "
                             f"other formats are {FORMATS}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records, got a {type(records).__name__}")
    for number, record in enumerate(records):
        yield f"{path} record {number}", record
