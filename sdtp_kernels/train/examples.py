"""`ExampleIndex`: the usable examples of a data file for training and marking, without holding their tokens.

One pass reads and checks every record (a bad one raises naming its file and line or row) and keeps, per usable
record, its number in the file, its length and its prompt length; an example is read again from the file when it is
asked for. Memory grows by a few numbers per record, not by its tokens, so a corpus larger than memory trains and
marks (JSONL by byte offset, Parquet / Arrow / save_to_disk memory-mapped; a .json list is held whole).
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Optional

from ..config import SDTPConfig
from .data import IGNORE_INDEX, TEXT_FIELD, Example, ExampleReader, check_trainable
from .data_files import RecordFile
from .schedule import has_prunable_tokens


class ExampleIndex(Sequence):
    """The examples of `path` whose prompt has a prunable token, in file order; `skipped` names the others (every
    prompt token protected: nothing to rank, and saliency statistics over no ranked token are undefined)."""

    def __init__(self, path: str, model_dir: str, vocab_size: int, config: SDTPConfig,
                 max_length: Optional[int] = None, text_field: str = TEXT_FIELD, bos: Optional[int] = None):
        self._file = RecordFile(path)
        self._read = ExampleReader(model_dir, vocab_size, max_length, text_field, bos)
        self._numbers = array("q")  # record number in the file of each usable example
        self.lengths = array("q")  # tokens of each usable example
        self.prompt_lengths = array("q")
        self.labelled_tokens = 0  # over the usable examples, the first token of each (never predicted) excluded
        self.skipped: list[str] = []
        for number, where, record in self._file.records():
            example = self._read.read(where, record)
            if not has_prunable_tokens(config, example.prompt_length):  # before the checks: a 0-token record too
                self.skipped.append(where)
                continue
            check_trainable(example)
            self._numbers.append(number)
            self.lengths.append(len(example.input_ids))
            self.prompt_lengths.append(example.prompt_length)
            self.labelled_tokens += sum(label != IGNORE_INDEX for label in example.labels[1:])

    def __len__(self) -> int:
        return len(self._numbers)

    def __getitem__(self, index: int) -> Example:
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        return self._read(*self._file.record(self._numbers[index]))
