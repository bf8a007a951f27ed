"""`sdtp demo` runs from a model directory to the table, the JSON and the plot."""
import json
from hf_tiny import PRUNING, tiny_model

from sdtp_kernels.cli import main
from sdtp_kernels.hf import apply_sdtp, save_sdtp


def test_demo_on_a_local_checkpoint(tmp_path, capsys):
    model = tiny_model("llama", "sdpa")
    model.save_pretrained(tmp_path / "model")
    save_sdtp(apply_sdtp(model, PRUNING), tmp_path / "model" / "sdtp")
    plot, figures = tmp_path / "demo.png", tmp_path / "demo.json"
    code = main(["demo", "--model", str(tmp_path / "model"), "--device", "cpu", "--batch", "2", "--context", "48",
                 "--new-tokens", "3", "--repeats", "1", "--plot", str(plot), "--json", str(figures)])
    assert code == 0 and plot.stat().st_size > 0
    table = capsys.readouterr().out
    assert "prefill latency" in table and "answers correct" not in table  # random prompts: no answers to check
    result = json.loads(figures.read_text())
    # kept tokens per stage, read off the pruned cache, follow the schedule (48 real tokens a row)
    assert result["sdtp"]["kept_per_stage"] == [PRUNING.kept_count(48, s) for s in (1, 2, 3)]
    assert result["sdtp"]["flops_prefill"] < result["dense"]["flops_prefill"]


def test_demo_without_predictors_says_what_to_pass(tmp_path, capsys):
    tiny_model("llama").save_pretrained(tmp_path / "model")
    assert main(["demo", "--model", str(tmp_path / "model"), "--device", "cpu"]) == 2
    assert "--predictors" in capsys.readouterr().err
