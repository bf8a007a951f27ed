"""`sdtp reference-model`: train the reference model and write it with what was measured of it.

Writes --out: `config.json` + `model.safetensors` (save_pretrained, --save-dtype), `generation_config.json`, the
tokenizer of the task's vocabulary (`tokenizer.json`, `tokenizer_config.json`), `task.json` (generator settings,
vocabulary, the held-out split, answer accuracy and each query's accuracy) and `train_summary.json` (command,
steps, stop reason, wall time, curriculum, held-out evaluations, the first step and the mean of the last 50, the
pruning probe). Checkpoints go to --work-dir; rerunning the same command resumes.

The installed model (`sdtp_kernels/models/reference/`) is three runs of two CPU threads, each from the previous
one's weights (about 24, 17 and 16 minutes; their commands are in its train_summary.json):

    sdtp reference-model --out runs/multikey_model --work-dir runs/multikey --seq-len 128 --n-pairs 4 \\
        --n-queries 4 --loss-on answers --curriculum 64,128 --aux-copy-rows 8 --threads 2 --time-budget-min 40 \\
        --max-steps 4000 --probe-size 0 --final-eval-size 200 --eval-every 200 --no-progress
    sdtp reference-model --out runs/multikey128_model --work-dir runs/multikey128 --init-from runs/multikey \\
        --seq-len 128 --n-pairs 4 --n-queries 4 --loss-on answers --curriculum 128 --lr 1e-3 --warmup 50 \\
        --threads 2 --time-budget-min 18 --max-steps 3000 --probe-size 200 --final-eval-size 200 --eval-every 200 \\
        --no-progress
    sdtp reference-model --out runs/kv16_model --work-dir runs/kv16 --init-from runs/multikey128 --seq-len 128 \\
        --n-pairs 16 --n-queries 16 --loss-on answers --curriculum 128 --lr 1e-3 --warmup 50 --threads 2 \\
        --time-budget-min 40 --max-steps 3000 --probe-size 200 --final-eval-size 400 --eval-every 200 --no-progress
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch

from ..arguments import RawHelpFormatter, non_negative_int, positive_int
from ..files import check_output_folder, respect_umask
from ..tasks.retrieval import RetrievalTask
from ..train.summary import summarize
from .measures import pruning_probe, query_accuracies
from .tokenizer import save_tokenizer
from .trainer import EVAL_SEED_OFFSET, ReferenceRun


def _lengths(text: str) -> str:
    """argparse type: comma-separated prompt lengths, each a positive int (kept as written: it names the run)."""
    for item in text.split(",") if text else []:  # empty: --seq-len alone
        positive_int(item)
    return text


_FLAGS = [
    # (flag, type, default, help); type None = a switch
    ("--work-dir", str, None, "checkpoints, resumed by rerunning the same command (required)"),
    ("--no-resume", None, False, "ignore an existing checkpoint in --work-dir"),
    ("--seq-len", positive_int, 256, "final (evaluation) prompt length"),
    ("--n-pairs", positive_int, 1, "key-value pairs in the context"),
    ("--n-queries", positive_int, 1, "queries; the last one is the prompt's question"),
    ("--n-keys", positive_int, 64, "key vocabulary"),
    ("--n-values", positive_int, 64, "value vocabulary"),
    ("--n-filler", positive_int, 128, "filler vocabulary"),
    ("--seed", non_negative_int, 0, "task and initialisation seed"),
    ("--curriculum", _lengths, "32,64,128,256", "comma-separated prompt lengths; the last is --seq-len"),
    ("--promote-acc", float, 0.9, "move to the next length when the running train answer accuracy reaches this"),
    ("--promote-window", positive_int, 20, "steps averaged for --promote-acc"),
    ("--min-stage-steps", non_negative_int, 50, "steps at a length before a promotion"),
    ("--layers", positive_int, 12, "decoder layers"),
    ("--hidden", positive_int, 128, "hidden size"),
    ("--heads", positive_int, 4, "attention heads"),
    ("--kv-heads", positive_int, 4, "key-value heads"),
    ("--intermediate", positive_int, 384, "MLP width"),
    ("--max-position", positive_int, 2048, "max_position_embeddings"),
    ("--init-std", float, 0.02, "initializer_range"),
    ("--batch-size", positive_int, 32, "rows per step, induction rows included"),
    ("--lr", float, 1.5e-3, "peak learning rate"),
    ("--min-lr-ratio", float, 0.1, "the cosine decays to this share of the peak"),
    ("--warmup", non_negative_int, 100, "linear warm-up steps"),
    ("--max-steps", positive_int, 3000, "length of the cosine schedule and hard stop"),
    ("--weight-decay", float, 0.01, "AdamW weight decay (matrices, not embeddings)"),
    ("--grad-clip", float, 1.0, "gradient norm clip"),
    ("--aux-copy-rows", non_negative_int, 0, "rows of each batch replaced by a repeated random segment (loss on the "
                                             "repeat): an induction warm-up, the copy mechanism that retrieval needs"),
    ("--aux-stages", non_negative_int, 1, "curriculum stages that get --aux-copy-rows"),
    ("--aux-weight", float, 1.0, "weight of the copy rows' loss"),
    ("--init-from", str, "", "start from a model directory or a run's --work-dir (fresh optimiser and schedule)"),
    ("--time-budget-min", float, 60.0, "stop (and save) after this much training wall time; 0 = none"),
    ("--stop-at-step", non_negative_int, 0, "stop (and save) at this step, schedule unchanged; 0 = none"),
    ("--eval-every", positive_int, 100, "steps between held-out evaluations"),
    ("--eval-size", positive_int, 256, "held-out prompts per evaluation"),
    ("--final-eval-size", positive_int, 1000, "held-out prompts of the final accuracies"),
    ("--target-acc", float, 0.97, "early stop when held-out accuracy at --seq-len reaches this"),
    ("--ckpt-every-s", float, 180.0, "seconds between checkpoints"),
    ("--threads", positive_int, 1, "torch CPU threads"),
    ("--probe-size", non_negative_int, 500, "prompts of the final pruning probe (0 = skip)"),
    ("--no-progress", None, False, "print a line every 10 steps instead of a progress bar"),
]


def add_commands(subparsers) -> None:
    """Add `reference-model` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "reference-model", help="train the reference model (a small Llama) on the synthetic retrieval task",
        description=__doc__, formatter_class=RawHelpFormatter)
    parser.add_argument("--out", required=True, help="directory the trained model is written to")
    for flag, kind, default, help_text in _FLAGS:
        if kind is None:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, required=default is None, help=help_text)
    parser.add_argument("--loss-on", choices=["answers", "query"], default="query",
                        help="answers: every query's value; query: every token of the query section")
    parser.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default="float16",
                        help="dtype of the written weights")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from transformers import GenerationConfig, LlamaForCausalLM

    check_output_folder(args.out)  # before training, not after it
    torch.set_num_threads(args.threads)
    run = ReferenceRun(args)
    state = run.state
    if run.resumed:
        print(f"resumed from {args.work_dir} at step {state['step']} (stage {state['stage']}, "
              f"{state['elapsed_s'] / 60:.1f} min trained)", flush=True)
    n_params = sum(p.numel() for p in run.model.parameters())
    print(f"model: {n_params / 1e6:.2f}M params, {args.layers} layers, hidden {args.hidden}; vocab "
          f"{run.base.vocab_size}; curriculum {run.lengths}; threads {torch.get_num_threads()}", flush=True)
    run.train()

    model = run.model.eval()
    model.config.use_cache = True
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False)
    os.makedirs(args.out, exist_ok=True)
    model.to(getattr(torch, args.save_dtype)).save_pretrained(args.out, safe_serialization=True)
    for name in os.listdir(args.out):
        if name.endswith(".safetensors"):
            respect_umask(os.path.join(args.out, name))
    save_tokenizer(run.tasks[-1], args.out)
    # Measured as users will load it.
    reloaded = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    held_out = RetrievalTask(run.base, seed=args.seed + EVAL_SEED_OFFSET)
    with torch.no_grad():
        per_query = query_accuracies(reloaded, held_out, args.final_eval_size)
        probe = pruning_probe(reloaded, held_out, args.probe_size) if args.probe_size else {}
    print(f"final held-out accuracy @ {args.seq_len} ({args.final_eval_size} prompts): {per_query[-1]:.4f}; each "
          f"query's: {[round(v, 4) for v in per_query]}", flush=True)
    if probe:
        print(f"pruning probe: {json.dumps(probe)}", flush=True)
    _write_json(args.out, "task.json", {
        "task": run.base.to_dict(),
        "generator": "sdtp_kernels.tasks.retrieval.RetrievalTask",
        "train_seed": args.seed,
        "heldout_seed": args.seed + EVAL_SEED_OFFSET,
        "curriculum": run.lengths,
        "prompt_format": "BOS, context of filler with n_pairs 'KEY k v' at random places, then n_queries 'QUERY k v' "
                         "with the last value missing; answer = that value (next token after the prompt)",
        "answer_accuracy": {"seq_len": args.seq_len, "prompts": args.final_eval_size, "accuracy": per_query[-1],
                            "per_query": per_query,
                            "dtype_evaluated": f"float32 (loaded from the saved {args.save_dtype} weights)"},
    })
    _write_json(args.out, "train_summary.json", {
        "command": " ".join(shlex.quote(x) for x in ["sdtp", *sys.argv[1:]]),
        "n_params": n_params,
        "stop_reason": state["stop_reason"],
        "train_wall_time_s": round(state["elapsed_s"], 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "final_accuracy": per_query[-1],
        "per_query_accuracy": per_query,
        "pruning_probe": probe,
        "curriculum_history": state["stage_history"],
        "evals": state["evals"],
        "train": summarize(_records(state)),
    })
    return 0


def _records(state: dict) -> list[dict]:
    """The first step's record and the last 50 steps', each once."""
    first = [state["first"]] if state["first"] else []
    return first + [r for r in state["recent"] if not first or r["step"] != first[0]["step"]]


def _write_json(directory: str, name: str, data: dict) -> None:
    with open(os.path.join(directory, name), "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
