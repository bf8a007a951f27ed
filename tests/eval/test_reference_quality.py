"""The reference model and predictors that install with the package (sdtp_kernels/models/reference/): on held-out
prompts SDTP keeps the unpruned answers at the paper's schedule and keeps far more of them than random pruning with
the same kept counts at a harder one (the full 500-prompt run is bench/results/quality.json)."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from sdtp_kernels.eval.prompts import task_prompts
from sdtp_kernels.eval.quality import evaluate_pruning
from sdtp_kernels.models import reference_model
from sdtp_kernels.predictor_file import read_predictors

REFERENCE = reference_model()


@pytest.mark.slow
def test_trained_predictors_keep_the_answer_where_random_pruning_loses_it():
    saved = read_predictors(REFERENCE / "sdtp")
    config, state = saved.config, saved.state
    model = AutoModelForCausalLM.from_pretrained(str(REFERENCE), dtype=torch.float32).eval().requires_grad_(False)
    prompts = task_prompts(str(REFERENCE / "task.json"), 128)
    results = evaluate_pruning(model, config, state, prompts, keep_ratios=(0.9, 0.7), methods=("sdtp", "random"))
    unpruned, sdtp, random = results["none"]["accuracy"], results["sdtp"], results["random"]
    assert unpruned >= 0.95
    assert sdtp["0.9"]["accuracy"] >= unpruned - 0.02 and sdtp["0.9"]["top1_agreement"] >= 0.98
    assert sdtp["0.7"]["accuracy"] >= random["0.7"]["accuracy"] + 0.2
