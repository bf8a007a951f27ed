"""What is recorded of a trained reference model: the accuracy of each query's value, and a pruning probe that
hides random tokens as attention keys from the stage layers on (the masked simulation), with and without the
answer's pair forced in."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import SDTPConfig
from ..eval.prompts import example_prompts
from ..eval.quality import answer_accuracy
from ..hf.masked import MaskedPruning, select_decide
from ..tasks.retrieval import RetrievalExample, RetrievalTask


def full_batch(examples: Sequence[RetrievalExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of prompts followed by their answers: full[:, :-1] and full[:, 1:]."""
    full = torch.tensor([e.full_sequence() for e in examples], dtype=torch.long)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


@torch.no_grad()
def query_accuracies(model: nn.Module, task: RetrievalTask, count: int, batch_size: int = 64) -> list[float]:
    """Accuracy of each query's value, in query order (the last one is the prompt's answer). The in-place answers
    say how the model solves the task: by looking the key up (all high) or by elimination (rising with the number
    of values already named: the last query's pair is the only one not yet asked for when n_queries = n_pairs)."""
    correct = torch.zeros(task.config.n_queries)
    positions = task.answer_target_positions()
    for start in range(0, count, batch_size):
        inputs, targets = full_batch(task.examples(start, min(batch_size, count - start)))
        logits = model(input_ids=inputs).logits[:, positions]
        correct += (logits.argmax(-1) == targets[:, positions]).sum(0)
    return [c / count for c in correct.tolist()]


def _random_keep_accuracy(model: nn.Module, config: SDTPConfig, examples: Sequence[RetrievalExample],
                          keep_answer: bool, generator: torch.Generator) -> float:
    """Answer accuracy of `examples` with each stage keeping the schedule's count of random tokens (protected ones
    always; the answer's pair `KEY k v` too when `keep_answer`), hidden as keys from its stage layer on."""
    scores = torch.rand(len(examples), len(examples[0].input_ids), generator=generator)
    if keep_answer:
        for row, e in enumerate(examples):
            scores[row, [e.key_position - 1, e.key_position, e.answer_position]] = float("inf")
    with MaskedPruning(model, config, select_decide(config, lambda stage, hidden: scores)):
        return answer_accuracy(model, example_prompts(examples), batch_size=len(examples))


@torch.no_grad()
def pruning_probe(model: nn.Module, task: RetrievalTask, count: int, start_layers=(4, 2, 1), layer_step: int = 3,
                  batch_size: int = 64, seed: int = 1) -> dict[str, float]:
    """Accuracy with random tokens hidden as keys from each stage layer on (the default SDTPConfig's protected
    tokens and kept counts, stages from start_layer every layer_step), against the same with the answer's pair
    forced in. A large gap means the model still needs the answer's tokens at those layers, so blind pruning loses
    the answer."""
    out = {}
    for start_layer in start_layers:
        for ratio in (0.9, 0.7):
            config = SDTPConfig(start_layer=start_layer, layer_step=layer_step, keep_ratio=ratio)
            for keep_answer in (False, True):
                generator = torch.Generator().manual_seed(seed)
                correct = 0.0
                for start in range(0, count, batch_size):
                    examples = task.examples(start, min(batch_size, count - start))
                    correct += len(examples) * _random_keep_accuracy(model, config, examples, keep_answer, generator)
                name = f"start{start_layer}_step{layer_step}_keep{ratio}_"
                out[name + ("answer_pair_kept" if keep_answer else "random")] = correct / count
    return out
