"""Training and marking never write what they cannot stand behind: records with nothing to prune are skipped and
listed, a non-finite loss or weight stops the run before it changes anything, an empty marking is an error, --dry-run
checks a data file in seconds, and a wrong --model path, --device, --out or checkpoint is one line naming it."""
import json
import os

import pytest
import torch
from hf_tiny import training_workdir
from safetensors.torch import load_file

import sdtp_kernels.train.objective as objective
from sdtp_kernels.cli import main
from sdtp_kernels.models import reference_model
from sdtp_kernels.train.summary import summarize

COMMON = ["--start-layer", "2", "--layer-step", "2", "--num-sink", "2"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A saved tiny Llama and 16 records, of which line 5 is 3 tokens long (every token protected)."""
    return training_workdir(tmp_path_factory.mktemp("robust"), short_line=5)


def _args(workdir, *extra):
    return ["--model", str(workdir / "model"), "--data", str(workdir / "data.jsonl"), *COMMON, *extra]


def test_a_record_with_nothing_to_prune_is_skipped_and_listed(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", *_args(workdir, "--out", str(out), "--max-steps", "3", "--batch-size", "4")]) == 0
    assert "skipped 1 record(s) whose prompt has no token outside the protected ones" in capsys.readouterr().err
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["records"] == 15 and summary["skipped_records"] == [f"{workdir / 'data.jsonl'} line 5"]
    assert all(torch.isfinite(t).all() for t in load_file(out / "sdtp_predictors.safetensors").values())
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "sdtp_predictors.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask  # not safetensors' 0600


def test_a_non_finite_loss_stops_before_anything_is_written(workdir, tmp_path, monkeypatch, capsys):
    forward = objective.PredictorObjective.forward

    def poisoned(self, *args, **kwargs):
        terms = forward(self, *args, **kwargs)
        return {**terms, "loss": terms["loss"] * float("nan")}

    monkeypatch.setattr(objective.PredictorObjective, "forward", poisoned)
    out = tmp_path / "out"
    assert main(["train", *_args(workdir, "--out", str(out), "--max-steps", "3", "--batch-size", "4")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 1: the training loss or its gradient is not finite (loss nan" in error
    assert "data.jsonl line" in error and "nothing was saved" in error
    assert not (out / "sdtp_predictors.safetensors").exists() and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("clip", ["1.0", "0"])  # clipping would turn an infinite gradient into NaN weights
def test_a_finite_loss_with_an_infinite_gradient_stops_too(workdir, tmp_path, monkeypatch, capsys, clip):
    forward = objective.PredictorObjective.forward

    def poisoned(self, *args, **kwargs):
        terms = forward(self, *args, **kwargs)
        terms["loss"].register_hook(lambda grad: grad * float("inf"))
        return terms

    monkeypatch.setattr(objective.PredictorObjective, "forward", poisoned)
    out = tmp_path / "out"
    args = _args(workdir, "--out", str(out), "--max-steps", "3", "--batch-size", "4", "--max-grad-norm", clip)
    assert main(["train", *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 1: the training loss or its gradient is not finite" in error and "gradient norm" in error
    assert not (out / "checkpoint.pt").exists()


def test_weights_the_optimiser_makes_non_finite_stop_before_a_checkpoint(workdir, tmp_path, monkeypatch, capsys):
    step = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "out"
    assert main(["train", *_args(workdir, "--out", str(out), "--max-steps", "1", "--batch-size", "4")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 1: the optimiser step made predictor weights not finite (learning rate 0.001)" in error
    assert "data.jsonl line" in error and "nothing was saved" in error and not (out / "checkpoint.pt").exists()


def test_the_summary_of_a_log_with_null_values():
    """A non-finite value is logged as null (strict JSON); the means skip it."""
    log = [{"step": 1, "loss": 1.0, "tokens_per_s": None}, {"step": 2, "loss": None, "tokens_per_s": None}]
    assert summarize(log)["mean_last_2"] == {"loss": 1.0, "tokens_per_s": None}


def test_marking_no_record_is_an_error(workdir, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    args = ["--model", str(workdir / "model"), "--data", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "m")]
    assert main(["mark", *args]) == 2
    assert "holds no record to mark" in capsys.readouterr().err
    assert not (tmp_path / "m" / "marking.json").exists()


def test_marking_skips_and_lists_the_same_records(workdir, tmp_path):
    assert main(["mark", *_args(workdir, "--out", str(tmp_path / "m"))]) == 0
    index = json.loads((tmp_path / "m" / "marking.json").read_text())
    assert index["records"] == 15 and index["skipped_records"] == [f"{workdir / 'data.jsonl'} line 5"]


def test_dry_run_reports_the_data_without_training(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", *_args(workdir, "--out", str(out), "--batch-size", "4", "--dry-run")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 16 and report["usable_records"] == 15 and report["batches_per_epoch"] == 3
    assert report["skipped_records"] == [f"{workdir / 'data.jsonl'} line 5"] and report["stage_layers"] == [2, 4, 6]
    assert 20 <= report["prompt_tokens_per_record"]["min"] and not out.exists()
    assert main(["train", *_args(workdir, "--out", str(out), "--batch-size", "32", "--dry-run")]) == 2
    assert "fewer usable records (15) than one batch (32)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["mark", "train"])  # mark's dry run has no batch size to fall short of
def test_dry_run_of_data_with_no_usable_record_is_an_error(workdir, tmp_path, capsys, command):
    data = tmp_path / "short.jsonl"
    data.write_text('{"input_ids": []}\n{"input_ids": [5]}\n{"input_ids": [5, 6]}\n')
    args = ["--model", str(workdir / "model"), "--data", str(data), *COMMON, "--out", str(tmp_path / "o")]
    assert main([command, *args, "--batch-size", "1", "--dry-run"]) == 2
    printed = capsys.readouterr()
    assert json.loads(printed.out)["skipped_records"] == [f"{data} line {n}" for n in (1, 2, 3)]
    assert "short.jsonl: no usable record (every record skipped)" in printed.err


@pytest.mark.parametrize("command", ["mark", "train", "eval"])
@pytest.mark.parametrize("kind", ["missing", "hub-id", "config-file"])
def test_a_wrong_model_path_is_one_line_naming_it(workdir, tmp_path, capsys, command, kind):
    model = {"missing": "./no/such/model", "hub-id": "llama-7b", "config-file": str(workdir / "model" / "config.json")}
    args = ["--model", model[kind], "--out", str(tmp_path / "o")]
    task = str(reference_model() / "task.json")
    args += ["--predictors", str(tmp_path), "--task", task] if command == "eval" else ["--data", "d.jsonl"]
    assert main([command, *args]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"--model {model[kind]}" in error, error


@pytest.mark.parametrize("command, flag, value", [
    ("train", "--batch-size", "0"), ("train", "--max-length", "-3"), ("train", "--max-grad-norm", "-1"),
    ("train", "--mse-weight", "nan"), ("train", "--warmup-steps", "-2"), ("mark", "--records-per-shard", "0"),
    ("train", "--lr", "inf"), ("train", "--lr", "-1"), ("train", "--tau", "nan"), ("train", "--tau", "0"),
])
def test_out_of_range_flags_are_refused_by_name(workdir, tmp_path, capsys, command, flag, value):
    args = ["--model", str(workdir / "model"), "--data", str(workdir / "data.jsonl"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as stopped:
        main([command, *args, flag, value])
    assert stopped.value.code == 2 and f"argument {flag}: expected" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "mark"])
def test_shard_outside_torchrun_is_refused_before_the_model_loads(workdir, tmp_path, capsys, monkeypatch, command):
    from sdtp_kernels.train import model as model_module

    monkeypatch.setattr(model_module, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    args = ["--model", str(workdir / "model"), "--data", str(workdir / "data.jsonl"), "--out", str(tmp_path / "o")]
    assert main([command, *args, "--shard"]) == 2
    assert "needs several processes: run under torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "mark", "eval", "demo"])
@pytest.mark.parametrize("value, expected", [("gpu", "expected a device such as cpu, cuda or cuda:1, got 'gpu'"),
                                             ("meta", "expected a device such as cpu, cuda or cuda:1, got 'meta'"),
                                             ("cuda:7", "'cuda:7': this machine has")])
def test_a_bad_device_is_refused_by_name(capsys, command, value, expected):
    if value.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as stopped:
        main([command, "--device", value])  # refused as it is parsed, before the required flags are missed
    assert stopped.value.code == 2 and f"argument --device: {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "mark"])
def test_an_out_that_is_a_file_is_refused_before_the_model_loads(workdir, tmp_path, capsys, monkeypatch, command):
    from sdtp_kernels.train import model as model_module

    monkeypatch.setattr(model_module, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "afile").write_text("")
    assert main([command, *_args(workdir, "--out", str(tmp_path / "afile"), "--device", "cpu")]) == 2
    assert f"--out {tmp_path / 'afile'} is a file; expected a folder" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path):
    from sdtp_kernels.train.checkpoint import CHECKPOINT_FILE, load_checkpoint

    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=f"--resume: {tmp_path / CHECKPOINT_FILE} is not a readable checkpoint"):
        load_checkpoint(str(tmp_path), {}, ["step"])


def test_an_explicit_gpu_index_under_torchrun_must_be_the_local_ranks(monkeypatch):
    from sdtp_kernels.train.processes import Processes

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"--device cuda:0: each process of a torchrun job takes the GPU of its "
                                         r"LOCAL_RANK \(this one: cuda:1\); pass --device cuda"):
        Processes("cuda:0")
