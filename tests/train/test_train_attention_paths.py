"""The memory-saving paths of training compute what the reference path computes: SDPA with the soft keep-policy as
an additive log-mask, and activation checkpointing of the frozen layers, give the eager path's loss terms, predictor
gradients and marked saliency; a bf16 model trains with float32 predictors."""
import pytest
import torch
from hf_tiny import PRUNING, VOCAB, tiny_model, training_workdir

from sdtp_kernels.hf import apply_sdtp, sdtp_predictors
from sdtp_kernels.train.activation_checkpointing import checkpoint_decoder_layers
from sdtp_kernels.train.data import collate, read_examples
from sdtp_kernels.train.objective import PredictorObjective
from sdtp_kernels.train.options import LossOptions
from sdtp_kernels.train.saliency import token_saliency
from sdtp_kernels.train.trainer import _unpruned_logits

PATHS = [("eager", False), ("sdpa", False), ("sdpa", True), ("eager", True)]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = training_workdir(tmp_path_factory.mktemp("paths"))
    examples = list(read_examples(str(root / "data.jsonl"), str(root / "model"), VOCAB))[:4]
    return collate(examples, range(4))  # left-padded rows of different lengths


def _step(attention: str, checkpointing: bool, batch, task: str = "kl", dtype=torch.float32):
    """(loss terms, predictor gradients, saliency) of one training step through the given path."""
    model = apply_sdtp(tiny_model("llama", attention).to(dtype).requires_grad_(False), PRUNING)
    torch.manual_seed(0)
    predictors = sdtp_predictors(model).float().requires_grad_(True)
    if checkpointing:
        checkpoint_decoder_layers(model)
    saliency = token_saliency(model, PRUNING, batch)
    teacher = _unpruned_logits(model, batch) if task == "kl" else None
    objective = PredictorObjective(model, PRUNING, predictors, LossOptions(task=task))
    terms = objective(batch, saliency, teacher, [torch.Generator().manual_seed(row) for row in range(4)])
    terms["loss"].backward()
    return terms, [p.grad.clone() for p in predictors.parameters()], saliency


@pytest.mark.parametrize("task", ["lm", "kl"])
def test_sdpa_and_checkpointing_give_the_eager_loss_and_gradients(batch, task):
    reference_terms, reference_grads, reference_saliency = _step("eager", False, batch, task)
    assert all(g.abs().sum() > 0 for g in reference_grads)
    for attention, checkpointing in PATHS[1:]:
        terms, grads, saliency = _step(attention, checkpointing, batch, task)
        for name, value in reference_terms.items():
            torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-6, msg=f"{attention} {name}")
        for grad, expected in zip(grads, reference_grads):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(saliency, reference_saliency, rtol=1e-4, atol=1e-5)


def test_a_bf16_model_trains_float32_predictors(batch):
    terms, grads, _ = _step("sdpa", True, batch, "lm", torch.bfloat16)
    assert torch.isfinite(terms["loss"]) and all(g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
    reference, _, _ = _step("eager", False, batch, "lm")
    assert abs(terms["task"].item() - reference["task"].item()) < 0.05 * reference["task"].item()
