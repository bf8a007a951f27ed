"""`sdtp mark` and `sdtp train`. `add_commands(subparsers)` registers them on the `sdtp` command line; each sets
`run`, which returns the exit status. The heavy modules load only when a command runs."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Optional

from ..arguments import HelpFormatter, device_name, non_negative_float, non_negative_int, positive_float, positive_int
from ..config import SDTPConfig
from .options import (ATTENTIONS, DTYPE_ALIASES, DTYPES, LR_SCHEDULES, NORMALIZATIONS, TASK_LOSSES, LossOptions,
                      SaliencyOptions, TrainOptions)

_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SDTPConfig)}
_LOSS_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LossOptions)}
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.default is not dataclasses.MISSING}
# The schedule flags each command takes: marking needs the stage layers and the protected tokens only.
_MARK_SCHEDULE = ("start_layer", "layer_step", "num_stages", "num_sink", "local_ratio")
_TRAIN_SCHEDULE = _MARK_SCHEDULE + ("keep_ratio", "predictor_hidden")
_SCHEDULE_HELP = {
    "start_layer": "0-based decoder layer before which stage 1 prunes",
    "layer_step": "decoder layers between stages",
    "num_stages": "stages (None: as many as fit)",
    "num_sink": "first prompt tokens always kept",
    "local_ratio": "the last ceil(local_ratio * L) prompt tokens are always kept",
    "keep_ratio": "stage s keeps ceil(keep_ratio**s * L) of a prompt's L tokens",
    "predictor_hidden": "predictor MLP width (None: hidden_size // 4)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _common(parser: argparse.ArgumentParser, schedule: tuple[str, ...]) -> None:
    parser.add_argument("--model", required=True, help="local model directory (transformers save_pretrained)")
    parser.add_argument("--data", required=True, help="records: a .jsonl / .json file, a .parquet or .arrow file, "
                        "or a folder written by datasets' save_to_disk (the last three need sdtp_kernels[data]); each "
                        "record holds input_ids [+ labels | answer], text, or prompt + response. A record with "
                        "input_ids trains on them: a text beside them is ignored")
    parser.add_argument("--text-field", default=_TRAIN_DEFAULTS["text_field"],
                        help="the field that holds a text record's text")
    parser.add_argument("--out", required=True, help="output directory")
    group = parser.add_argument_group("SDTP schedule (docs/ARCHITECTURE.md §4)")
    for name in schedule:
        default = _CONFIG_DEFAULTS[name]
        kind = float if isinstance(default, float) else int
        group.add_argument(_flag(name), type=kind, default=default, help=_SCHEDULE_HELP[name])
    parser.add_argument("--batch-size", type=positive_int, default=_TRAIN_DEFAULTS["batch_size"],
                        help="records per batch (per process when training)")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="keep each record's last N tokens (and its first, if it is the model's BOS)")
    parser.add_argument("--dtype", type=lambda name: DTYPE_ALIASES.get(name, name), choices=DTYPES,
                        default=_TRAIN_DEFAULTS["dtype"], help="of the frozen model (also bf16, fp16, fp32); half "
                        "precision runs its forward under autocast, the predictors and optimiser stay float32")
    parser.add_argument("--device", type=device_name, default=None,
                        help="None: the (local-rank) GPU if there is one, else cpu")
    memory = parser.add_argument_group("memory (docs/ARCHITECTURE.md §5.2)")
    memory.add_argument("--attention", choices=ATTENTIONS, default=None,
                        help="the frozen model's attention (None: the model's default). sdpa does not materialise "
                        "the attention probabilities where the backend can differentiate the mask (GPU)")
    memory.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing of the frozen decoder layers: one layer's activations at a "
                        "time, each layer run twice")
    memory.add_argument("--shard", action="store_true",
                        help="shard the frozen model across the torchrun processes (FSDP); same checkpoints and "
                        "resume as without")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and check the whole data file against the model's config (no weights loaded), "
                        "print what would be used and skipped, and stop")


def _saliency_flags(parser: argparse.ArgumentParser) -> None:
    # Defaults of None tell "not given" from "given": `train` on an existing marking accepts only its own options.
    parser.add_argument("--absolute", action="store_true", default=None,
                        help="saliency |sum_d(dT/dx * x)| instead of the signed -sum_d(dT/dx * x)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                        help="per row and stage (None: zscore, or the marking's own)")


def _config(args: argparse.Namespace) -> SDTPConfig:
    return SDTPConfig(**{name: getattr(args, name) for name in _CONFIG_DEFAULTS if hasattr(args, name)})


def _saliency(args: argparse.Namespace) -> Optional[SaliencyOptions]:
    """The saliency options given on the command line, None if none was."""
    if args.absolute is None and args.normalization is None:
        return None
    given = {"absolute": args.absolute, "normalization": args.normalization}
    return SaliencyOptions(**{name: value for name, value in given.items() if value is not None})


def _dry_run(args: argparse.Namespace, batch_size: Optional[int]) -> int:
    from .data_check import check_data

    report = check_data(args.model, args.data, _config(args), args.max_length, batch_size, args.text_field)
    print(json.dumps(report, indent=2))
    if "error" in report:
        raise ValueError(f"{args.data}: {report['error']}")
    return 0


def _run_mark(args: argparse.Namespace) -> int:
    from .mark import mark

    if args.dry_run:
        return _dry_run(args, None)

    index = mark(
        args.model, args.data, args.out, _config(args), _saliency(args) or SaliencyOptions(), args.batch_size,
        args.records_per_shard, args.max_length, args.dtype, args.device, args.text_field, args.attention,
        args.checkpointing, args.shard,
    )
    if index is not None:  # process 0 of a torchrun job, or a lone process
        print(f"marked {index['records']} records at layers {index['stage_layers']} into {args.out}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from .trainer import train

    loss = LossOptions(**{name: getattr(args, name) for name in _LOSS_DEFAULTS})
    options = TrainOptions(
        model=args.model, data=args.data, out=args.out, sdtp=_config(args), loss=loss, saliency=_saliency(args),
        saliency_dir=args.saliency, max_length=args.max_length, text_field=args.text_field, dtype=args.dtype,
        device=args.device, attention=args.attention, checkpointing=args.checkpointing, shard=args.shard,
        **{name: getattr(args, name) for name in (
            "batch_size", "max_steps", "lr", "weight_decay", "warmup_steps", "lr_schedule", "max_grad_norm",
            "save_every", "resume", "seed",
        )},
    )
    if args.dry_run:  # after the options, whose checks it makes too
        return _dry_run(args, args.batch_size * int(os.environ.get("WORLD_SIZE", "1")))
    train(options)
    if os.environ.get("RANK", "0") == "0":  # one line from a torchrun job, not one per process
        print(f"trained predictors written to {args.out} (load with sdtp_kernels.hf.apply_sdtp(model, {args.out!r}))")
    return 0


def add_commands(subparsers) -> None:
    """Add `mark` and `train` to an argparse subparsers object."""
    mark = subparsers.add_parser(
        "mark", help="gradient x input saliency of data records at the stage layers (safetensors shards)",
        description="Run the frozen model on every record and write the saliency of each token at the input of "
        "each stage layer to safetensors shards in --out (index: marking.json). Records whose prompt has no token "
        "outside the protected ones are skipped (listed in marking.json).",
        formatter_class=HelpFormatter,
    )
    _common(mark, _MARK_SCHEDULE)
    _saliency_flags(mark)
    mark.add_argument("--records-per-shard", type=positive_int, default=1024, help="records per safetensors shard")
    mark.set_defaults(run=_run_mark)

    train = subparsers.add_parser(
        "train", help="train the SDTP predictors of a frozen model",
        description="Train the predictors with Gumbel-softmax masks, the model frozen; write them with save_sdtp to "
        "--out. Records whose prompt has no token outside the protected ones are skipped (listed in "
        "train_summary.json); a non-finite loss stops the run before it changes anything. Several processes: "
        "torchrun --nproc-per-node N -m sdtp_kernels.cli train ... (add --shard to split the frozen model between "
        "them; several machines: torchrun's --nnodes, --node-rank and --rdzv-endpoint).",
        formatter_class=HelpFormatter,
    )
    _common(train, _TRAIN_SCHEDULE)
    train.add_argument("--saliency", default=None, help="a marking of --data by `sdtp mark` (None: mark each "
                       "batch on the fly)")
    _saliency_flags(train)
    losses = train.add_argument_group("loss")
    losses.add_argument("--task-loss", dest="task", choices=TASK_LOSSES, default=_LOSS_DEFAULTS["task"],
                        help="lm: LM loss of the pruned forward; kl: KL to the unpruned model")
    for name in ("task_weight", "mse_weight", "rank_weight", "ratio_weight"):
        losses.add_argument(_flag(name), type=non_negative_float, default=_LOSS_DEFAULTS[name],
                            help=f"weight of the {name.split('_')[0]} term")
    losses.add_argument("--tau", type=positive_float, default=_LOSS_DEFAULTS["tau"], help="Gumbel-softmax temperature")
    losses.add_argument("--rank-pairs", type=positive_int, default=_LOSS_DEFAULTS["rank_pairs"],
                        help="ranking pairs per row and stage: every ordered pair of its candidate tokens while "
                        "there are at most this many, sampled beyond")
    run = train.add_argument_group("optimisation")
    run.add_argument("--max-steps", type=positive_int, default=_TRAIN_DEFAULTS["max_steps"],
                     help="optimisation steps")
    run.add_argument("--lr", type=positive_float, default=_TRAIN_DEFAULTS["lr"], help="peak learning rate")
    run.add_argument("--weight-decay", type=non_negative_float, default=_TRAIN_DEFAULTS["weight_decay"],
                     help="AdamW weight decay")
    run.add_argument("--max-grad-norm", type=non_negative_float, default=_TRAIN_DEFAULTS["max_grad_norm"],
                     help="gradient norm clip (0: no clipping)")
    run.add_argument("--warmup-steps", type=non_negative_int, default=_TRAIN_DEFAULTS["warmup_steps"],
                     help="linear warm-up")
    run.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=_TRAIN_DEFAULTS["lr_schedule"],
                     help="after the warm-up: cosine decay to 0 at --max-steps, or constant")
    run.add_argument("--save-every", type=non_negative_int, default=_TRAIN_DEFAULTS["save_every"],
                     help="checkpoint every N steps (0: at the end only)")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    run.add_argument("--seed", type=int, default=_TRAIN_DEFAULTS["seed"], help="initialisation, data order, noise")
    train.set_defaults(run=_run_train)
