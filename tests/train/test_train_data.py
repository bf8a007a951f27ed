"""Training data: the accepted records, their errors, left-padded batches and the per-step record order."""
import json

import pytest

from sdtp_kernels.train.data import IGNORE_INDEX, BatchOrder, Example, collate, read_examples


def _write(path, records, jsonl=True):
    with open(path, "w") as f:
        if jsonl:
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            json.dump(records, f)
    return str(path)


def test_token_id_records(tmp_path):
    records = [
        {"input_ids": [1, 2, 3]},
        {"input_ids": [1, 2, 3], "answer": [4, 5], "meta": "ignored"},
        {"input_ids": [1, 2, 3], "answer": 6},
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, IGNORE_INDEX]},
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, IGNORE_INDEX], "answer": [7]},  # in-place answer too
    ]
    for jsonl in (True, False):
        path = _write(tmp_path / ("d.jsonl" if jsonl else "d.json"), records, jsonl)
        examples = list(read_examples(path, str(tmp_path), vocab_size=10))  # no tokenizer there: none needed
        assert [(e.input_ids, e.labels, e.prompt_length) for e in examples] == [
            ([1, 2, 3], [1, 2, 3], 3),
            ([1, 2, 3, 4, 5], [IGNORE_INDEX] * 3 + [4, 5], 3),
            ([1, 2, 3, 6], [IGNORE_INDEX] * 3 + [6], 3),
            ([1, 2, 3], [IGNORE_INDEX, 2, IGNORE_INDEX], 3),
            ([1, 2, 3, 7], [IGNORE_INDEX, 2, IGNORE_INDEX, 7], 3),
        ]
    truncated = list(read_examples(path, str(tmp_path), vocab_size=10, max_length=3))
    assert (truncated[1].input_ids, truncated[1].prompt_length) == ([3, 4, 5], 1)  # the answer's end is kept


@pytest.mark.parametrize(
    "record, message",
    [
        ({"ids": [1, 2]}, r"d.jsonl line 2: a record holds one of `input_ids` .*none of them \(fields: \['ids'\]\)"),
        ({"text": "a", "prompt": "b"}, "line 2: .*has `text` and `prompt`"),
        ({"input_ids": [1, 99]}, "line 2: `input_ids` holds 99, outside the model's vocabulary"),
        ({"input_ids": [1, 2], "labels": [1]}, "line 2: `labels` has 1 entries for 2 `input_ids`"),
        ({"input_ids": [1, 2], "labels": [2, IGNORE_INDEX]}, "line 2: no labelled token after the first"),
        ({"input_ids": []}, "line 2: the record holds no token"),
        ({"input_ids": [], "answer": [3]}, r"line 2: no prompt token left to prune \(answer only"),
        ({"prompt": "a"}, "line 2: a `prompt` record needs a `response`"),
        ({"text": "hello"}, "line 2 holds text, but no tokenizer could be loaded from"),
    ],
)
def test_bad_records_name_their_line(tmp_path, record, message):
    path = _write(tmp_path / "d.jsonl", [{"input_ids": [1, 2]}, record])
    with pytest.raises(ValueError, match=message):
        list(read_examples(path, str(tmp_path), vocab_size=10))


def test_a_record_with_ids_and_its_text_trains_on_the_ids(tmp_path):
    """A tokenised corpus that kept its text column: the ids are used (no tokenizer needed), the text ignored."""
    path = _write(tmp_path / "d.jsonl", [{"input_ids": [1, 2, 3], "text": "one two three"}])
    [example] = read_examples(path, str(tmp_path), vocab_size=10)
    assert example.input_ids == [1, 2, 3] and example.labels == [1, 2, 3]


def test_collate_left_pads():
    examples = [Example([1, 2, 3, 4], [IGNORE_INDEX] * 3 + [4], 3), Example([5, 6], [5, 6], 2)]
    batch = collate(examples, [7, 3])
    assert batch.input_ids.tolist() == [[1, 2, 3, 4], [0, 0, 5, 6]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch.labels.tolist() == [[IGNORE_INDEX] * 3 + [4], [IGNORE_INDEX] * 2 + [5, 6]]
    assert batch.prompt_mask.tolist() == [[True, True, True, False], [False, False, True, True]]
    assert batch.records == [7, 3]


def test_batch_order_splits_epochs_between_processes():
    orders = [BatchOrder(num_records=11, batch_size=2, world_size=2, rank=r, seed=3) for r in range(2)]
    epoch0 = [record for step in range(2) for order in orders for record in order.records(step)]
    assert len(set(epoch0)) == 8  # two global batches of 4, no record twice, the incomplete rest skipped
    assert orders[0].position(5) == {"epoch": 2, "batch": 1}
    assert orders[0].records(2) != orders[0].records(0)  # a new permutation each epoch
    assert BatchOrder(11, 2, 2, 0, seed=3).records(5) == orders[0].records(5)  # a function of the step
    with pytest.raises(ValueError, match="fewer than one global batch of 4"):
        BatchOrder(3, 2, 2, 0, 0)
