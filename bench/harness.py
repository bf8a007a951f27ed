"""The reference model through lm-evaluation-harness: both retrieval tasks (generation and multiple choice) for the
dense model, SDTP at keep ratios 0.9 and 0.7, and random pruning at 0.7 (same kept counts), written as
{"sdtp_retrieval": {"dense": a, "sdtp_0.9": a, "sdtp_0.7": a, "random_0.7": a}, "sdtp_retrieval_mc": {...}}; and,
for the generation variant, `sdtp eval`'s accuracy on the same prompts beside it (both paths are deterministic).

    PYTHONPATH=build/lm-eval .venv/bin/python bench/harness.py --out bench/results/harness.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

RUNS = {  # name -> model args beyond pretrained=
    "dense": {"sdtp": "off"},
    "sdtp_0.9": {"keep_ratio": 0.9},
    "sdtp_0.7": {"keep_ratio": 0.7},
    "random_0.7": {"keep_ratio": 0.7, "scorer": "random"},
}


def harness_accuracy(model_dir: str, args: dict, limit: int, batch_size: int) -> dict[str, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from sdtp_kernels.lm_eval import TASKS, task_folder

    # float32 as `sdtp eval` runs it (the reference model's weights are stored in float16, which HFLM would keep).
    model_args = ",".join(f"{k}={v}" for k, v in {"pretrained": model_dir, "dtype": "float32", **args}.items())
    # Exactly `limit` documents, the prompts sdtp_eval_accuracy scores (the default folder holds the first 500).
    tasks = TaskManager(include_path=str(task_folder(count=limit)), include_defaults=False)  # only ours: fast
    out = lm_eval.simple_evaluate(model="sdtp", model_args=model_args, tasks=list(TASKS), limit=limit,
                                  batch_size=batch_size, task_manager=tasks,
                                  device="cuda" if torch.cuda.is_available() else "cpu")
    return {"sdtp_retrieval": out["results"]["sdtp_retrieval"]["exact_match,none"],
            "sdtp_retrieval_mc": out["results"]["sdtp_retrieval_mc"]["acc,none"]}


def sdtp_eval_accuracy(model_dir: str, count: int) -> dict[str, float]:
    """`sdtp eval`'s answer accuracy on the same held-out prompts: unpruned, and SDTP at 0.9 and 0.7."""
    from sdtp_kernels.eval.prompts import task_prompts
    from sdtp_kernels.eval.quality import evaluate_pruning
    from sdtp_kernels.hf.model_dir import load_causal_lm
    from sdtp_kernels.predictor_file import read_predictors

    saved = read_predictors(os.path.join(model_dir, "sdtp"))
    model = load_causal_lm(model_dir).eval().requires_grad_(False)
    prompts = task_prompts(os.path.join(model_dir, "task.json"), count)
    result = evaluate_pruning(model, saved.config, saved.state, prompts, keep_ratios=(0.9, 0.7), methods=("sdtp",))
    return {"dense": result["none"]["accuracy"], "sdtp_0.9": result["sdtp"]["0.9"]["accuracy"],
            "sdtp_0.7": result["sdtp"]["0.7"]["accuracy"]}


def main(argv=None) -> int:
    from sdtp_kernels.arguments import positive_int

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the installed reference model)")
    parser.add_argument("--limit", type=positive_int, default=500, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="build/bench/harness.json", help="results JSON")
    args = parser.parse_args(argv)
    from sdtp_kernels.models import reference_model

    model_dir = args.model or str(reference_model())
    results: dict = {"sdtp_retrieval": {}, "sdtp_retrieval_mc": {}}
    for name, model_args in RUNS.items():
        accuracy = harness_accuracy(model_dir, model_args, args.limit, args.batch_size)
        for task, value in accuracy.items():
            results[task][name] = value
        print(f"{name:>10}: {accuracy}", file=sys.stderr, flush=True)
    results["sdtp_eval_same_prompts"] = sdtp_eval_accuracy(model_dir, args.limit)
    from importlib.metadata import version

    from sdtp_kernels.files import utc_timestamp

    results["config"] = {"model": model_dir, "documents": args.limit, "batch_size": args.batch_size, "runs": RUNS,
                         "lm_eval": version("lm_eval"), "torch": torch.__version__,
                         "transformers": version("transformers"),
                         "command": "python bench/harness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                         "date": utc_timestamp()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
