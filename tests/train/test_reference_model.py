"""`sdtp reference-model` end to end on a tiny model: it writes a loadable model with its task description and
per-query accuracies, and rerunning the same command resumes from the checkpoint instead of training again."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.mark.slow
def test_tiny_run_writes_a_loadable_model_and_resumes(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    command = [sys.executable, "-m", "sdtp_kernels.cli", "reference-model", "--out", str(out), "--work-dir",
               str(work), "--layers", "5", "--hidden", "32", "--heads", "2", "--kv-heads", "2", "--intermediate", "64",
               "--seq-len", "48", "--n-pairs", "3", "--n-queries", "3", "--curriculum", "48", "--max-steps", "3",
               "--eval-every", "2", "--eval-size", "8", "--final-eval-size", "8", "--probe-size", "8", "--batch-size",
               "4", "--aux-copy-rows", "1", "--no-progress", "--threads", "1", "--time-budget-min", "0"]
    _run(command)

    task = json.loads((out / "task.json").read_text())
    accuracy = task["answer_accuracy"]
    assert len(accuracy["per_query"]) == 3 and all(0 <= a <= 1 for a in accuracy["per_query"])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train"]["steps"] == 3 and summary["per_query_accuracy"] == accuracy["per_query"]
    assert set(summary["pruning_probe"]) >= {"start4_step3_keep0.7_random", "start4_step3_keep0.7_answer_pair_kept"}
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert model.config.num_hidden_layers == 5 and model.config.vocab_size == task["task"]["vocab_size"]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("<bos> <key> k0 v0 f0")["input_ids"] == [1, 3, 5, 69, 133]
    assert len(tokenizer) == task["task"]["vocab_size"]

    rerun = _run(command)
    assert "resumed from" in rerun.stdout
    # Resumed at its end: the same training record, nothing trained again.
    assert json.loads((out / "train_summary.json").read_text())["train"] == summary["train"]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
