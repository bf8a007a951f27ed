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
    # Each row's first token is never predicted, so it carries no label (after the shift it would sit on padding).
    assert batch.labels.tolist() == [[IGNORE_INDEX] * 3 + [4], [IGNORE_INDEX] * 3 + [6]]
    assert batch.prompt_mask.tolist() == [[True, True, True, False], [False, False, True, True]]
    assert batch.records == [7, 3]


def test_a_rows_labelled_targets_do_not_depend_on_its_batch():
    """The targets `labelled_positions` gives a row are the same alone and left-padded beside a longer row."""
    from sdtp_kernels.train.losses import labelled_positions

    short, long = Example([5, 6, 7], [5, 6, 7], 3), Example([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 5)

    def targets(batch, row):
        positions, labels = labelled_positions(batch.labels)
        kept = labels[row] != IGNORE_INDEX
        return (positions[kept] - batch.labels.shape[1]).tolist(), labels[row][kept].tolist()  # from the right

    assert targets(collate([short], [0]), 0) == targets(collate([long, short], [0, 1]), 1) == ([-3, -2], [6, 7])


def test_truncation_keeps_a_leading_bos(tmp_path):
    """--max-length keeps the end of a record, and its first token when that is the model's BOS (inference prompts
    start with it); without a BOS, or with none named, only the end."""
    from sdtp_kernels.train.data import ExampleReader

    records = [{"input_ids": [1, 2, 3, 4, 5, 6]}, {"input_ids": [2, 3, 4], "answer": [7, 8]},
               {"input_ids": [1, 2], "answer": [7, 8, 9]}]

    def read(max_length, bos=None):
        reader = ExampleReader(str(tmp_path), vocab_size=10, max_length=max_length, bos=bos)
        return [(e.input_ids, e.labels, e.prompt_length) for e in (reader.read("r", r) for r in records)]

    assert read(3, bos=1) == [
        ([1, 5, 6], [1, 5, 6], 3),
        ([4, 7, 8], [IGNORE_INDEX, 7, 8], 1),  # no BOS: the end only
        ([1, 8, 9], [IGNORE_INDEX, 8, 9], 1),  # the prompt is the BOS alone
    ]
    assert read(3) == [([4, 5, 6], [4, 5, 6], 3), ([4, 7, 8], [IGNORE_INDEX, 7, 8], 1), ([7, 8, 9], [7, 8, 9], 0)]
    assert [ids for ids, _, _ in read(1, bos=1)] == [[6], [8], [9]]  # no room for both: the last token
    path = _write(tmp_path / "d.jsonl", records[:1])
    assert [e.input_ids for e in read_examples(path, str(tmp_path), vocab_size=10, max_length=3, bos=1)] == [[1, 5, 6]]


def test_text_field_may_be_named_prompt(tmp_path):
    """--text-field prompt reads a `prompt` column as text (loss on every token); a `prompt` with a `response`
    stays a prompt/response record."""
    from sdtp_kernels.train.data import ExampleReader

    reader = ExampleReader(str(tmp_path), vocab_size=10, text_field="prompt")
    reader.tokenize = lambda where, text, special_tokens: [int(c) for c in text]  # a digit tokenizer
    assert reader("r", {"prompt": "123"}) == Example([1, 2, 3], [1, 2, 3], 3, "r")
    assert reader("r", {"prompt": "12", "response": "3"}) == Example([1, 2, 3], [IGNORE_INDEX] * 2 + [3], 2, "r")


def test_batch_order_splits_epochs_between_processes():
    orders = [BatchOrder(num_records=11, batch_size=2, world_size=2, rank=r, seed=3) for r in range(2)]
    epoch0 = [record for step in range(2) for order in orders for record in order.records(step)]
    assert len(set(epoch0)) == 8  # two global batches of 4, no record twice, the incomplete rest skipped
    assert orders[0].position(5) == {"epoch": 2, "batch": 1}
    assert orders[0].records(2) != orders[0].records(0)  # a new permutation each epoch
    assert BatchOrder(11, 2, 2, 0, seed=3).records(5) == orders[0].records(5)  # a function of the step
    with pytest.raises(ValueError, match="fewer than one global batch of 4"):
        BatchOrder(3, 2, 2, 0, 0)
