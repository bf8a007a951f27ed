"""The committed reference model and predictors (models/reference/): SDTP keeps the answer on held-out prompts
where random pruning with the same kept counts loses it (the full 500-prompt run is bench/results/quality.json)."""
import pathlib

import torch
from transformers import AutoModelForCausalLM

from sdtp_kernels import evaluate as E

REFERENCE = pathlib.Path(__file__).resolve().parents[1] / "models" / "reference"


def test_trained_predictors_keep_the_answer_where_random_pruning_loses_it():
    config, state, _ = E.load_predictors(str(REFERENCE / "sdtp"))
    model = AutoModelForCausalLM.from_pretrained(str(REFERENCE), dtype=torch.float32).eval().requires_grad_(False)
    prompts = E.task_prompts(str(REFERENCE / "task.json"), 64)
    results = E.evaluate_pruning(model, config, state, prompts, keep_ratios=(0.7,), methods=("sdtp", "random"))
    unpruned, sdtp, random = results["none"]["accuracy"], results["sdtp"]["0.7"], results["random"]["0.7"]
    assert unpruned >= 0.95
    assert sdtp["accuracy"] >= unpruned - 0.02 and sdtp["top1_agreement"] >= 0.98
    assert sdtp["accuracy"] >= random["accuracy"] + 0.2
