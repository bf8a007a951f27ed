"""`sdtp eval`: how much answer quality SDTP keeps, against blind and training-free pruning, on held-out prompts
whose answer is the next token after the prompt (docs/ARCHITECTURE.md §6)."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from ..arguments import HelpFormatter, device_name, existing_file, non_negative_int, positive_int
from ..files import strict_json
from ..predictor_file import read_predictors
from ..train.options import SaliencyOptions
from .marking import evaluate_spearman
from .prompts import check_vocabulary, file_prompts, task_prompts
from .quality import DEFAULT_KEEP_RATIOS, METHODS, evaluate_pruning
from .report import format_table, plot, results_json


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"keep ratios must lie in (0, 1], got {text!r}")
    return values


def _eval(args: argparse.Namespace) -> int:
    from ..hf.families import family_of
    from ..hf.model_dir import load_causal_lm, local_model_dir

    local_model_dir(args.model)  # a wrong path fails here, before anything is read

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.task:
        prompts = task_prompts(args.task, args.count, args.start)
        source = {"task": args.task}
    else:
        prompts = file_prompts(args.data, args.count or None, args.start)
        source = {"data": args.data}
    if not prompts:
        raise ValueError("no prompts to evaluate")
    saved = read_predictors(args.predictors)
    config, state = saved.config, saved.state
    trained_saliency = saved.saliency_options()
    saliency_options = SaliencyOptions(**trained_saliency) if trained_saliency else None
    model = load_causal_lm(args.model, getattr(torch, args.dtype), attn_implementation="eager")
    model = model.to(device).eval().requires_grad_(False)
    num_layers = len(family_of(model).decoder_layers(model))
    saved.check_fits(model.config.hidden_size, num_layers, type(model).__name__)  # before any forward runs
    check_vocabulary(prompts, model.get_input_embeddings().num_embeddings)
    stage_layers = config.stage_layers(num_layers)
    print(f"sdtp eval: {len(prompts)} prompts, stages before layers {stage_layers}, keep ratios {args.keep_ratios}",
          file=sys.stderr, flush=True)
    pruning = evaluate_pruning(model, config, state, prompts, args.keep_ratios, METHODS, args.batch_size, args.seed,
                               progress=True)
    spearman_result = None
    if args.spearman_count > 0:
        spearman_result = evaluate_spearman(
            model, config, state, prompts[: args.spearman_count], saliency_options,
            batch_size=min(args.batch_size, 16), untrained_seeds=range(args.seed, args.seed + args.untrained_seeds),
        )
        print(f"  spearman trained {spearman_result['trained']:.3f} untrained {spearman_result['untrained']:.3f}",
              file=sys.stderr, flush=True)
    run_config = {
        "sdtp": config.to_dict(),
        "stage_layers": stage_layers,
        "keep_ratios": [float(r) for r in args.keep_ratios],
        "model": args.model,
        "predictors": args.predictors,
        **source,
        "prompts": len(prompts),
        "first_prompt": args.start,
        "dtype": args.dtype,
        "attn_implementation": "eager",
        "seed": args.seed,
        "attention_baseline": "head-mean attention of the last prompt token in the decoder layer before each stage "
                              "layer, over the tokens that stage ranks (FastV style)",
        "random_baseline": "uniform random scores through the same select_tokens (same kept counts, same protected "
                           "tokens)",
        "agreement": "top1: arg-max of the last-token logits equals the unpruned one; kl: mean KL(unpruned || "
                     "pruned) of the last-token distributions (nats)",
    }
    command = args.command_line or "sdtp " + " ".join(sys.argv[1:])
    results = results_json(pruning, spearman_result, run_config, command)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(strict_json(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    print(format_table(results))
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def add_commands(subparsers) -> None:
    """Add `eval` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "eval", help="answer accuracy of SDTP against random and attention-score pruning",
        description="Answer accuracy and last-token agreement of held-out prompts unpruned, with SDTP's trained "
        "predictors, with random scores and with last-token attention scores (same kept counts and protected "
        "tokens), and the Spearman correlation of predictor scores with marked saliency.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", required=True, help="local model directory (transformers save_pretrained)")
    parser.add_argument("--predictors", required=True, help="directory written by save_sdtp / `sdtp train`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="JSONL records with `input_ids` (prompt) and `answer` (next token)")
    source.add_argument("--task", type=existing_file,
                        help="a retrieval task.json (e.g. sdtp_kernels/models/reference/task.json): its held-out "
                        "prompts")
    parser.add_argument("--out", required=True, help="results JSON (e.g. bench/results/quality.json)")
    parser.add_argument("--plot", default=None, help="bar chart PNG (None: no plot)")
    parser.add_argument("--keep-ratios", type=_ratios, default=",".join(map(str, DEFAULT_KEEP_RATIOS)),
                        help="comma-separated keep ratios")
    parser.add_argument("--count", type=non_negative_int, default=500, help="prompts (--data: 0 = all)")
    parser.add_argument("--start", type=non_negative_int, default=0, help="first held-out prompt index")
    parser.add_argument("--spearman-count", type=non_negative_int, default=200,
                        help="prompts for the saliency correlation (0: skip)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per forward")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="of the model")
    parser.add_argument("--device", type=device_name, default=None, help="None: cuda if available, else cpu")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="random baseline and first untrained predictors' seed")
    parser.add_argument("--untrained-seeds", type=positive_int, default=8,
                        help="freshly initialised predictor sets averaged for the untrained Spearman")
    parser.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(run=_eval)
