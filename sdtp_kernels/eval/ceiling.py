"""How far can any stage predictor follow the marked saliency on the retrieval task? The ceiling that the trained
predictors' Spearman correlation (`sdtp eval`) is read against.

A predictor scores a token from its own hidden state at the stage layer, which (causal model) has seen only the
token and its past. This measures, on held-out prompts of a retrieval task.json, the Spearman correlation between
marked saliency and

- ``fitted``: predictors of the schedule's shape fitted *directly* to the marked saliency of other prompts (the
  training losses' MSE + ranking terms, no pruning, no LM loss): the best this predictor family reaches here;
- ``position``: the mean saliency of each prompt position (a lookup table from the same prompts);

and, to say where the rest of the saliency comes from, ``key_swap``: the correlation between the saliency of the
filler tokens of a prompt and of the same prompt with its key replaced by another key (at the pair and at the
query). Where that is far from 1, the filler tokens' saliency depends on which key is asked for, which a token
before the pair cannot know.

    python -m sdtp_kernels.eval.ceiling --model sdtp_kernels/models/reference \\
        --task sdtp_kernels/models/reference/task.json --predictors sdtp_kernels/models/reference/sdtp \\
        --out bench/results/saliency-ceiling.json
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch
from tqdm import tqdm

from ..arguments import (RawHelpFormatter, existing_file, non_negative_float, non_negative_int, positive_int,
                         reporting_bad_input)
from ..config import SDTPConfig
from ..files import strict_json, utc_timestamp
from ..hf import apply_sdtp, remove_sdtp, sdtp_predictors
from ..hf.model_dir import load_causal_lm
from ..predictor_file import read_predictors
from ..tasks.retrieval import RetrievalTaskConfig
from ..train.losses import masked_mse, ranking_loss
from ..train.options import SaliencyOptions
from .marking import MarkedBatch, mark_prompts, mean_spearman
from .prompts import Prompt, read_task, task_prompts
from .report import machine, number


def fitted_predictors(model, config: SDTPConfig, marked: list[MarkedBatch], steps: int, lr: float, seed: int):
    """Fresh predictors of the schedule's shape, each fitted to its stage's marked saliency (MSE + ranking)."""
    torch.manual_seed(seed)
    apply_sdtp(model, config)
    predictors = sdtp_predictors(model)
    remove_sdtp(model)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(predictors.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="fit predictors to saliency", file=sys.stderr):
        batch = marked[int(torch.randint(len(marked), (1,), generator=generator))]
        loss = 0.0
        for s, hidden in enumerate(batch.stage_inputs):
            scores = predictors[s].log_odds(predictors[s].logits(hidden))
            target = batch.saliency[s]
            loss = loss + masked_mse(scores, target, batch.ranked) + ranking_loss(
                scores, target, batch.ranked, 16384, [generator] * target.shape[0])  # one stream, row after row
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return lambda stage, hidden: predictors[stage].log_odds(predictors[stage].logits(hidden))


def position_table(marked: list[MarkedBatch]):
    """Scores = the mean marked saliency of each (stage, position) over the given prompts."""
    stages = len(marked[0].stage_inputs)
    length = max(batch.ranked.shape[1] for batch in marked)
    total, count = torch.zeros(stages, length), torch.zeros(length)
    for batch in marked:
        n = batch.ranked.shape[1]
        total[:, :n] += (batch.saliency * batch.ranked).sum(1)
        count[:n] += batch.ranked.sum(0)
    table = total / count.clamp_min(1)
    return lambda stage, hidden: table[stage, : hidden.shape[1]].expand(hidden.shape[0], -1)


def key_swap_stability(model, config: SDTPConfig, prompts: list[Prompt], original: list[MarkedBatch],
                       task: RetrievalTaskConfig, options, batch_size: int) -> list[float]:
    """Per stage: mean over prompts of Spearman(filler saliency, filler saliency with the queried key replaced).
    `original`: `prompts` as `mark_prompts` marked them with `options` and `batch_size`."""
    def swapped(prompt: Prompt) -> Prompt:
        key = prompt.input_ids[-1]  # the query's key: the prompt's last token
        # The next key id that the prompt does not hold: another pair's key would make the question ambiguous.
        present = set(prompt.input_ids)
        other = next((k for k in (task.key_offset + (key - task.key_offset + step) % task.n_keys
                                  for step in range(1, task.n_keys)) if k not in present), None)
        if other is None:
            raise ValueError(f"key_swap needs a key the prompt does not hold; this task uses all {task.n_keys} keys")
        return dataclasses.replace(prompt, input_ids=[other if t == key else t for t in prompt.input_ids])

    changed = mark_prompts(model, config, [swapped(p) for p in prompts], options, batch_size)
    ids = [torch.tensor(p.input_ids) for p in prompts]
    marked = []
    for first, (a, b) in enumerate(zip(original, changed)):
        rows = ids[first * batch_size : first * batch_size + a.ranked.shape[0]]
        filler = torch.zeros_like(a.ranked)
        for r, row in enumerate(rows):
            filler[r, : len(row)] = row >= task.filler_offset
        # Score = the swapped prompt's saliency, target = the original's, over the filler tokens they rank.
        marked.append(MarkedBatch(a.saliency, list(b.saliency), a.ranked & filler))
    return mean_spearman(lambda stage, saliency: saliency, marked)


PROG = "python -m sdtp_kernels.eval.ceiling"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=RawHelpFormatter)
    parser.add_argument("--model", required=True, help="local model directory (the task's model)")
    parser.add_argument("--task", required=True, type=existing_file,
                        help="retrieval task.json (its held-out prompts are used)")
    parser.add_argument("--predictors", default=None,
                        help="take the schedule and the saliency options from this save_sdtp directory")
    parser.add_argument("--absolute", action="store_true", help="absolute saliency (without --predictors)")
    parser.add_argument("--count", type=positive_int, default=256, help="held-out prompts measured")
    parser.add_argument("--fit-count", type=positive_int, default=1024,
                        help="other held-out prompts the fits learn from")
    parser.add_argument("--steps", type=positive_int, default=600,
                        help="fitting steps (one batch of --batch-size prompts each)")
    parser.add_argument("--lr", type=non_negative_float, default=3e-3, help="learning rate of the fits")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per fitting step")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the fits and their batches")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="CPU threads; 0: torch's default")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    return reporting_bad_input(PROG, lambda: _measure(args, argv))


def _measure(args: argparse.Namespace, argv) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config, options = SDTPConfig(), SaliencyOptions(absolute=args.absolute)
    if args.predictors:
        saved = read_predictors(args.predictors)
        config, trained = saved.config, saved.saliency_options()
        options = SaliencyOptions(**trained) if trained else options
    model = load_causal_lm(args.model).eval().requires_grad_(False)
    task, _ = read_task(args.task)
    prompts = task_prompts(args.task, args.count)
    fit = mark_prompts(model, config, task_prompts(args.task, args.fit_count, start=args.count), options,
                       args.batch_size)
    held_out = mark_prompts(model, config, prompts, options, args.batch_size)
    per_stage = {
        "fitted": mean_spearman(fitted_predictors(model, config, fit, args.steps, args.lr, args.seed), held_out),
        "position": mean_spearman(position_table(fit), held_out),
        "key_swap": key_swap_stability(model, config, prompts, held_out, task, options, args.batch_size),
    }
    results = {
        "spearman": {name: sum(v) / len(v) for name, v in per_stage.items()},
        "spearman_per_stage": per_stage,
        "saliency": options.describe(),
        "sdtp": config.to_dict(),
        "prompts": args.count,
        "fit_prompts": args.fit_count,
        "fit_steps": args.steps,
        "command": PROG + " " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "date": utc_timestamp(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(strict_json(results, indent=2) + "\n")
    for name, values in per_stage.items():
        print(f"{name:>9}: {number(results['spearman'][name])} (per stage {', '.join(map(number, values))})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
