"""`sdtp demo` runs from a model directory to the table, the JSON and the plot; it checks its flags and the
prompt length."""
import json

import pytest
import torch
from hf_tiny import LAYERS, PRUNING, VOCAB, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from sdtp_kernels.cli import main
from sdtp_kernels.hf import apply_sdtp, save_sdtp
from sdtp_kernels.measure import flops


@pytest.mark.parametrize("name, overrides", [("llama", {}), ("qwen3", {"head_dim": 32}), ("gemma3", {"head_dim": 32}),
                                             ("bloom", {}), ("phi3", {}), ("olmo2", {})])
def test_analytic_flops_are_the_matrix_products_a_dense_forward_runs(name, overrides):
    """flops() counts what torch's FLOP counter counts in an eager forward (full attention products, the last token's
    LM head): head widths other than hidden / heads, BLOOM's plain 4 x MLP, fused QKV. Not the rotary tables' outer
    product of frequencies and positions, a matmul in some transformers versions (not a per-token weight product)."""
    model = tiny_model(name, "eager", **overrides).eval()
    ids = torch.randint(3, VOCAB, (1, 24))
    with FlopCounterMode(display=False) as counted, torch.no_grad():
        model(ids, logits_to_keep=1, use_cache=False)
    rotary = sum(sum(ops.values()) for module, ops in counted.get_flop_counts().items()
                 if "rotary" in module.rpartition(".")[2])
    assert flops(model.config, [24] * LAYERS, 1)[0] == counted.get_total_flops() - rotary


def test_demo_on_a_structure_flops_does_not_model(tmp_path, capsys):
    """Mixture-of-experts layers: FLOPs are n/a in the table, null in the JSON, left out of the plot."""
    model = tiny_model("mixtral", "sdpa")
    model.save_pretrained(tmp_path / "model")
    save_sdtp(apply_sdtp(model, PRUNING), tmp_path / "model" / "sdtp")
    assert main(["demo", "--model", str(tmp_path / "model"), "--device", "cpu", "--batch", "1", "--context", "48",
                 "--new-tokens", "2", "--repeats", "1", "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "n/a" in next(line for line in table if line.startswith("| prefill FLOPs (G)"))
    result = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert result["dense"]["flops_prefill"] is None and result["sdtp"]["flops_e2e"] is None
    assert (tmp_path / "out" / "demo.png").stat().st_size > 0


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


def test_a_context_too_short_for_the_task_names_the_flag(capsys):
    assert main(["demo", "--device", "cpu", "--batch", "1", "--context", "16"]) == 2
    assert "sdtp demo: error: --context 16: seq_len=16 too short" in capsys.readouterr().err


def test_a_context_past_the_trained_length_warns(tmp_path):
    from sdtp_kernels.demo import check_context

    (tmp_path / "task.json").write_text(json.dumps({"task": {"seq_len": 128}}))
    with pytest.warns(UserWarning, match="trained on 128-token prompts"):
        check_context(tmp_path, 1024, 2048)


def test_an_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from sdtp_kernels import demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    (tmp_path / "afile").write_text("")
    assert main(["demo", "--device", "cpu", "--out", str(tmp_path / "afile")]) == 2
    assert f"--out {tmp_path / 'afile'} is a file; expected a folder" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--eval-every", "0"), ("--threads", "0"), ("--final-eval-size", "0"),
                                         ("--batch-size", "0"), ("--curriculum", "64,abc"), ("--seed", "-1")])
def test_reference_model_flags_are_checked_as_they_are_parsed(flag, value, capsys):
    """A zero that divides (--eval-every) or indexes (--batch-size) failed with a traceback, some after training."""
    with pytest.raises(SystemExit) as stopped:
        main(["reference-model", "--out", "o", "--work-dir", "w", flag, value])
    assert stopped.value.code == 2 and f"argument {flag}: expected a" in capsys.readouterr().err


def test_dense_and_sdtp_take_turns_call_by_call():
    """The demo and bench/e2e.py time both sides in turns, so that a change in the machine's load slows both alike."""
    import contextlib

    from sdtp_kernels.measure import CLOCKS, interleaved

    order = []

    def mode(name):
        @contextlib.contextmanager
        def entered():
            order.append(name)
            yield
        return entered

    runs = interleaved({"dense": mode("dense"), "sdtp": mode("sdtp")}, lambda: None, "cpu", 3, CLOCKS["wall"])
    assert order == ["dense", "sdtp"] * 3 and [len(r) for r in runs.values()] == [3, 3]


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_gpu_named_with_its_index_is_waited_for_and_its_memory_read(device, monkeypatch):
    """`--device cuda:0` timed without waiting for the GPU and reported the process's CPU memory."""
    import torch

    from sdtp_kernels import measure

    calls = []
    for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: calls.append((name, args)) or 0)
    measure.measure(lambda: None, device, measure.CLOCKS["wall"])
    assert [name for name, _ in calls] == ["synchronize", "reset_peak_memory_stats", "memory_allocated",
                                           "synchronize", "synchronize", "max_memory_allocated"]
    assert all(args == (device,) for _, args in calls)
    assert measure.peak_mem_method(device) == measure.PEAK_MEM_METHOD["cuda"]
