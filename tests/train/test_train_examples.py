"""ExampleIndex: training and marking read every record once to check it, then keep a few numbers per record and
read an example again from its file when asked for, so memory does not grow with the tokens of the corpus."""
import json
import random
import tracemalloc

import pytest
from hf_tiny import PRUNING

from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.train.data import read_examples
from sdtp_kernels.train.examples import ExampleIndex
from sdtp_kernels.train.schedule import has_prunable_tokens

RECORDS = [
    {"input_ids": [3] * 40},
    {"input_ids": [1, 2, 3]},  # every prompt token protected: skipped
    {"input_ids": [5, 6, 7, 8] * 10, "answer": [4, 5]},
    {"input_ids": [4, 5, 6] * 12, "text": "ignored beside the ids", "labels": [-100] + [5] * 35},
]


def _write(path, records, as_list=False):
    with open(path, "w") as f:
        if as_list:
            json.dump(records, f)
        else:
            f.write("\n")  # a blank line: not a record, but it counts in the line numbers
            f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


@pytest.mark.parametrize("as_list", [False, True], ids=["jsonl", "json"])
def test_the_index_gives_the_streamed_examples_in_order_and_names_the_skipped(tmp_path, as_list):
    path = _write(tmp_path / ("d.json" if as_list else "d.jsonl"), RECORDS, as_list)
    index = ExampleIndex(path, str(tmp_path), 10, PRUNING)
    streamed = list(read_examples(path, str(tmp_path), 10))
    usable = [e for e in streamed if has_prunable_tokens(PRUNING, e.prompt_length)]
    assert len(index) == 3 and list(index) == usable
    assert [index[i] for i in (2, 0, -1)] == [usable[2], usable[0], usable[-1]]  # any order, again
    assert index.skipped == [e.source for e in streamed if e not in usable]
    assert index.skipped == [f"{path} line 3"] if not as_list else [f"{path} record 1"]
    assert list(index.lengths) == [len(e.input_ids) for e in usable]
    with pytest.raises(IndexError):
        index[3]


def test_records_of_no_or_one_token_are_skipped_like_other_unprunable_ones(tmp_path):
    short = [{"input_ids": []}, {"input_ids": [5]}, {"input_ids": [], "answer": [4]}, {"input_ids": [5, 6]}]
    path = _write(tmp_path / "d.jsonl", RECORDS[:1] + short)
    index = ExampleIndex(path, str(tmp_path), 10, PRUNING)
    assert len(index) == 1 and index.skipped == [f"{path} line {n}" for n in range(3, 7)]


def test_a_bad_record_is_named_by_its_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", RECORDS[:1] + [{"input_ids": [1, 99]}])
    with pytest.raises(ValueError, match=r"d.jsonl line 3: `input_ids` holds 99"):
        ExampleIndex(path, str(tmp_path), 10, PRUNING)


def test_memory_does_not_grow_with_the_tokens_of_the_corpus(tmp_path):
    # 300 records of 2,000 tokens: held as examples they take tens of MB; the index holds a few numbers per record.
    rng = random.Random(0)
    records = [{"input_ids": [rng.randrange(300, 1000) for _ in range(2000)]} for _ in range(300)]
    path = _write(tmp_path / "big.jsonl", records)
    config = SDTPConfig(keep_ratio=0.9)

    tracemalloc.start()
    held = list(read_examples(path, str(tmp_path), 1000))
    list_bytes = tracemalloc.get_traced_memory()[0]
    del held
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    index = ExampleIndex(path, str(tmp_path), 1000, config)
    examples = [index[i] for i in (0, 150, 299)]
    index_bytes = tracemalloc.get_traced_memory()[0] - before
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()

    assert examples[1].input_ids == records[150]["input_ids"]
    assert list_bytes > 20e6  # what reading the corpus into memory costs
    assert index_bytes < 1e6 and peak < 2e6, (index_bytes, peak)  # the index and 3 examples; one line at a time


def test_a_file_changed_after_indexing_is_refused_not_misread(tmp_path):
    path = _write(tmp_path / "d.jsonl", RECORDS)
    index = ExampleIndex(path, str(tmp_path), 10, PRUNING)
    _write(tmp_path / "d.jsonl", RECORDS[::-1])
    with pytest.raises(RuntimeError, match="changed since it was read"):
        index[0]
