"""Training data in the formats corpora are kept in: JSONL, Parquet, Arrow and datasets' save_to_disk folders give
the same records (read through `datasets`, memory-mapped), errors name the row, and the same 64 records train to
identical predictors whatever file they come in."""
import json

import pytest
import torch
from hf_tiny import PRUNING, VOCAB, training_workdir
from safetensors.torch import load_file

from sdtp_kernels.train.data import read_examples
from sdtp_kernels.train.options import TrainOptions
from sdtp_kernels.train.trainer import train

datasets = pytest.importorskip("datasets")

RECORDS = [
    {"input_ids": [1, 2, 3]},
    {"input_ids": [1, 2, 3], "answer": [4, 5]},
    {"input_ids": [4, 5, 6], "text": "ignored beside the ids", "labels": [-100, 5, 6]},
]


def _table(records):
    """A datasets table of `records`: one column per field any record has, null where a record lacks it."""
    fields = sorted({name for record in records for name in record})
    return datasets.Dataset.from_dict({name: [record.get(name) for record in records] for name in fields})


def _write_all(directory, records):
    """{format: path} of the same records as JSONL, Parquet, an Arrow file and a save_to_disk folder."""
    with open(directory / "d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    table = _table(records)
    table.to_parquet(str(directory / "d.parquet"))
    table.save_to_disk(str(directory / "saved"))
    [arrow] = (directory / "saved").glob("*.arrow")
    return {"jsonl": directory / "d.jsonl", "parquet": directory / "d.parquet", "arrow": arrow,
            "save_to_disk": directory / "saved"}


def test_every_format_reads_the_same_records(tmp_path):
    paths = _write_all(tmp_path, RECORDS)
    read = {name: list(read_examples(str(path), str(tmp_path), vocab_size=10)) for name, path in paths.items()}
    expected = [(e.input_ids, e.labels, e.prompt_length) for e in read["jsonl"]]
    assert expected[2] == ([4, 5, 6], [-100, 5, 6], 3)  # the text beside the ids is ignored
    for name, examples in read.items():
        assert [(e.input_ids, e.labels, e.prompt_length) for e in examples] == expected, name
    assert read["parquet"][1].source == f"{paths['parquet']} row 1"
    datasets.DatasetDict({"train": _table(RECORDS)}).save_to_disk(str(tmp_path / "dict"))
    assert len(list(read_examples(str(tmp_path / "dict"), str(tmp_path), vocab_size=10))) == 3  # its one split


@pytest.mark.parametrize("fmt", ["torch", "numpy"])
def test_a_dataset_saved_in_a_tensor_format_reads_as_plain_records(tmp_path, fmt):
    """A tokenised dataset saved after set_format("torch" / "numpy") loads back in that format; its rows are read
    as lists of ints all the same, from a save_to_disk folder and from its Arrow file."""
    jsonl = str(_write_all(tmp_path, RECORDS)["jsonl"])
    expected = [(e.input_ids, e.labels) for e in read_examples(jsonl, str(tmp_path), vocab_size=10)]
    _table(RECORDS).with_format(fmt).save_to_disk(str(tmp_path / "formatted"))
    [arrow] = (tmp_path / "formatted").glob("*.arrow")
    for path in (tmp_path / "formatted", arrow):
        assert [(e.input_ids, e.labels) for e in read_examples(str(path), str(tmp_path), vocab_size=10)] == expected


def test_errors_name_the_row_and_what_was_expected(tmp_path):
    paths = _write_all(tmp_path, [{"input_ids": [1, 2]}, {"input_ids": [1, 99]}])
    for name in ("parquet", "save_to_disk"):
        with pytest.raises(ValueError, match=rf"{paths[name]} row 1: `input_ids` holds 99, outside the model's"):
            list(read_examples(str(paths[name]), str(tmp_path), vocab_size=10))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="was not written by datasets' save_to_disk"):
        list(read_examples(str(tmp_path / "empty"), str(tmp_path), vocab_size=10))
    with pytest.raises(FileNotFoundError, match="does not exist; expected a .jsonl or .json file, a .parquet"):
        list(read_examples(str(tmp_path / "missing.parquet"), str(tmp_path), vocab_size=10))
    splits = datasets.DatasetDict({s: _table(RECORDS) for s in ("train", "test")})
    splits.save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(ValueError, match=r"holds the splits \['test', 'train'\]; pass the folder of one of them"):
        list(read_examples(str(tmp_path / "splits"), str(tmp_path), vocab_size=10))


def test_text_field_names_the_text_column(tmp_path):
    paths = _write_all(tmp_path, [{"input_ids": [1, 2]}, {"content": "hello"}])
    with pytest.raises(ValueError, match=r"row 1: a record holds one of .*`text`.*none of them"):
        list(read_examples(str(paths["parquet"]), str(tmp_path), vocab_size=10))
    with pytest.raises(ValueError, match="row 1 holds text, but no tokenizer could be loaded"):  # read as text
        list(read_examples(str(paths["parquet"]), str(tmp_path), vocab_size=10, text_field="content"))


def test_the_same_records_in_every_format_train_identical_predictors(tmp_path):
    root = training_workdir(tmp_path)
    g = torch.Generator().manual_seed(1)
    records = []
    for _ in range(64):
        prompt = torch.randint(1, VOCAB, (int(torch.randint(20, 40, (1,), generator=g)),), generator=g).tolist()
        records.append({"input_ids": prompt, "answer": [prompt[1]], "text": "kept by the corpus, ignored"})
    weights = {}
    for name, path in _write_all(tmp_path, records).items():
        if name == "arrow":
            continue  # the save_to_disk folder's own file: read the same way
        options = TrainOptions(str(root / "model"), str(path), str(tmp_path / name), sdtp=PRUNING, batch_size=8,
                               max_steps=3, save_every=0, lr=1e-2, device="cpu")
        train(options)
        weights[name] = load_file(tmp_path / name / "sdtp_predictors.safetensors")
    for name, trained in weights.items():
        assert all(torch.equal(trained[k], weights["jsonl"][k]) for k in trained), name
