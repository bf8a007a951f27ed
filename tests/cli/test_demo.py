"""`sdtp demo` runs from a model directory to the table, the JSON and the plot; it checks its flags and the
prompt length."""
import json

import pytest
from hf_tiny import PRUNING, tiny_model

from sdtp_kernels.cli import main
from sdtp_kernels.hf import apply_sdtp, save_sdtp


def test_demo_on_a_local_checkpoint(tmp_path, capsys):
    model = tiny_model("llama", "sdpa")
    model.save_pretrained(tmp_path / "model")
    save_sdtp(apply_sdtp(model, PRUNING), tmp_path / "model" / "sdtp")
    plot, figures = tmp_path / "out" / "demo.png", tmp_path / "out" / "demo.json"
    code = main(["demo", "--model", str(tmp_path / "model"), "--device", "cpu", "--batch", "2", "--context", "48",
                 "--new-tokens", "3", "--repeats", "2", "--out", str(tmp_path / "out")])
    assert code == 0 and plot.stat().st_size > 0
    table = capsys.readouterr().out
    assert "prefill latency" in table and "answers correct" not in table  # random prompts: no answers to check
    result = json.loads(figures.read_text())
    # kept tokens per stage, read off the pruned cache, follow the schedule (48 real tokens a row)
    assert result["sdtp"]["kept_per_stage"] == [PRUNING.kept_count(48, s) for s in (1, 2, 3)]
    assert result["sdtp"]["flops_prefill"] < result["dense"]["flops_prefill"]
    timings = result["dense"]["prefill_timings"]  # repeated: median and spread
    assert len(timings["all_s"]) == 2 and timings["min_s"] <= timings["median_s"] <= timings["max_s"]
    assert "median (min-max) of 2" in table


def test_demo_without_predictors_says_what_to_pass(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path / "model")
    assert main(["demo", "--model", str(tmp_path / "model"), "--device", "cpu"]) == 2
    assert "--predictors" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--batch", "--repeats", "--new-tokens", "--context"])
def test_numeric_flags_must_be_positive(flag, capsys):
    with pytest.raises(SystemExit):
        main(["demo", flag, "0"])
    assert f"argument {flag}: expected a positive integer" in capsys.readouterr().err


def test_a_context_past_the_models_positions_is_refused(tmp_path, capsys):
    model = tiny_model("llama", "sdpa")  # 256 positions
    model.save_pretrained(tmp_path / "model")
    save_sdtp(apply_sdtp(model, PRUNING), tmp_path / "model" / "sdtp")
    assert main(["demo", "--model", str(tmp_path / "model"), "--device", "cpu", "--context", "300"]) == 2
    assert "--context 300 exceeds the 256 positions" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "model"), "--device", "cpu"]) == 2  # random prompts: 4096
    assert "--context 4096 exceeds the 256 positions" in capsys.readouterr().err


def test_a_context_past_the_trained_length_warns(tmp_path):
    from sdtp_kernels.demo import check_context

    (tmp_path / "task.json").write_text(json.dumps({"task": {"seq_len": 128}}))
    with pytest.warns(UserWarning, match="trained on 128-token prompts"):
        check_context(tmp_path, 1024, 2048)
