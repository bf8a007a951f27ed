"""Predictor training (docs/ARCHITECTURE.md §5): the LLM frozen, only the SDTP predictors learn. One process, or
several under `torchrun` (DistributedDataParallel over the predictors; NCCL on GPUs, gloo on CPU), the frozen model
replicated in each or sharded across them (`shard`, FSDP). Only rank 0 writes.

Writes to `out`: `checkpoint.pt` every `save_every` steps and at the end (what `resume` continues from exactly),
`train_log.jsonl` (every step's loss terms, `kept`, the fraction of the prompts alive after the last stage, and
`kept_target`, the schedule's, averaged over processes; `MEASURED_FIELDS`: tokens per second and peak memory),
`train_options.json`, `train_summary.json` (the log's
first and last step and the mean of the last 50), and the trained predictors through `save_sdtp`
(`sdtp_config.json`, `sdtp_predictors.safetensors`: `apply_sdtp(model, out)` loads them). When the masks of the
last steps kept far more than the schedule, a warning says so: the task loss is outweighing the keep-ratio term, so
the task loss never saw the schedule's pruning (raise the ratio weight).

All randomness of a step (Gumbel noise, sampled ranking pairs) comes from one generator per row, seeded by
(seed, step, record), and the data order is a function of (seed, step) (`BatchOrder`): a checkpoint's step is its
data position and its random state, so that 2 steps + resume + 2 steps gives bitwise the weights of 4 steps
straight. With the token-mean terms normalised over all processes (`PredictorObjective`), a step's update does not
depend on how its global batch is split between processes either.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import warnings
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import SDTPConfig
from ..files import check_output_folder, strict_json
from ..hf.families import family_of
from ..hf.patch import apply_sdtp, save_sdtp, sdtp_disabled, sdtp_predictors
from ..predictor_file import TRAIN_OPTIONS_FILE
from .activation_checkpointing import checkpoint_decoder_layers
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .data import Batch, BatchOrder, bos_token_id, collate
from .examples import ExampleIndex
from .losses import labelled_positions
from .lr import warmup_cosine
from .fingerprints import examples_fingerprint, marking_fingerprint, model_fingerprint
from .model import frozen_precision, load_frozen_model
from .objective import PredictorObjective
from .options import SaliencyOptions, TrainOptions
from .processes import Processes, StepMeter
from .saliency import token_saliency
from .schedule import describe_skipped
from .sharding import loading_device, shard_frozen_model
from .shards import SaliencyShards, batch_saliency
from .summary import write_summary

LOG_FILE = "train_log.jsonl"
KEPT_GAP_STEPS = 50  # the last steps whose kept-minus-target gap the end-of-training warning averages
KEPT_GAP_WARNING = 0.1


def _generators(seed: int, step: int, records: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per row, seeded by (seed, step, record): a row's noise does not depend on which process trains
    it or what it is batched with."""
    generators = []
    for record in records:
        digest = hashlib.sha256(f"sdtp-train:{seed}:{step}:{record}".encode()).digest()
        generators.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little")))
    return generators


@torch.no_grad()
def _unpruned_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    positions, _ = labelled_positions(batch.labels)
    with sdtp_disabled(model), frozen_precision(model, batch.input_ids.device):
        return model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=positions, use_cache=False
        ).logits


def _check_marking(marking: SaliencyShards, config: SDTPConfig, stage_layers: list[int], num_records: int,
                   options: Optional[SaliencyOptions], max_length: Optional[int]) -> SaliencyOptions:
    """The saliency options `marking` was marked with, once it fits this run."""
    marked = SaliencyOptions.from_description(marking.index)
    if options is not None and options != marked:
        raise ValueError(
            f"{marking.directory} holds saliency marked with {marked}, not the requested {options}; drop the saliency "
            "options to train on it, or mark again"
        )
    if marking.index["stage_layers"] != stage_layers:
        raise ValueError(
            f"{marking.directory} was marked at the inputs of layers {marking.index['stage_layers']}, but this "
            f"schedule's stage layers are {stage_layers}; mark with the same --start-layer, --layer-step, --num-stages"
        )
    if marking.index.get("max_length") != max_length:  # else a truncated record fails only when a batch reaches it
        raise ValueError(f"{marking.directory} was marked with --max-length {marking.index.get('max_length')}, this "
                         f"run has {max_length}; train with the marking's --max-length, or mark again")
    if len(marking) != num_records:
        raise ValueError(f"{marking.directory} marked {len(marking)} records, the training data has {num_records}")
    marked_config = marking.index.get("sdtp_config", {})
    for name in ("num_sink", "local_ratio"):  # the protected tokens, which marking leaves out of its statistics
        if marked_config.get(name) != getattr(config, name):
            raise ValueError(f"{marking.directory} was marked with {name} = {marked_config.get(name)}, this schedule "
                             f"has {getattr(config, name)}; mark with the same --{name.replace('_', '-')}")
    return marked


def _trim_log(out: str, step: int) -> None:
    """Drop log lines past `step`: those of a run that stopped after its last checkpoint, including a last line cut
    short by a crash. The log is replaced whole (write, then rename)."""
    path = os.path.join(out, LOG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            if number == len(lines) and not line.endswith("\n"):
                break  # written when the run died: its step is redone
            raise ValueError(f"{path} line {number}: not a training log line ({error})") from None
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def _stop_on_nonfinite(step: int, problem: str, examples: ExampleIndex, records: list[int], out: str) -> None:
    sources = ", ".join(examples[r].source for r in records)
    where = "the last checkpoint in it is untouched" if os.path.exists(checkpoint_path(out)) else "nothing was saved"
    raise ValueError(f"step {step}: {problem}; records of this batch: {sources}. Training stopped before this step "
                     f"changed anything in {out} ({where})")


def train(options: TrainOptions) -> nn.Module:
    """Train the predictors of `options.model` and return the model with them applied."""
    processes = Processes(options.device)
    try:
        return _train(options, processes)
    finally:
        processes.close()


def _train(options: TrainOptions, processes: Processes) -> nn.Module:
    device, out = processes.device, options.out
    check_output_folder(out)
    if not options.resume and os.path.exists(checkpoint_path(out)):
        raise ValueError(f"{out} already holds a training checkpoint; pass --resume to continue it, or another --out")

    model = load_frozen_model(options.model, options.dtype, loading_device(device, options.shard), options.attention)
    model_digest = model_fingerprint(model)  # before SDTP adds predictors and sharding splits the weights
    torch.manual_seed(options.seed)  # the predictors' initial weights (DDP also broadcasts rank 0's)
    apply_sdtp(model, options.sdtp)
    predictors = sdtp_predictors(model).float().requires_grad_(True).train()
    num_stages = len(predictors)
    if options.checkpointing:
        checkpoint_decoder_layers(model)
    if options.shard:
        shard_frozen_model(model, device, predictors)

    examples = ExampleIndex(options.data, options.model, model.get_input_embeddings().num_embeddings, options.sdtp,
                            options.max_length, options.text_field, bos_token_id(model.config))
    if examples.skipped and processes.main:
        tqdm.write(f"sdtp train: skipped {describe_skipped(examples.skipped)}", file=sys.stderr)
    marking, saliency_options = None, options.saliency or SaliencyOptions()  # what the predictors learn to follow
    if options.saliency_dir is not None:
        marking = SaliencyShards(options.saliency_dir)
        stage_layers = options.sdtp.stage_layers(len(family_of(model).decoder_layers(model)))
        saliency_options = _check_marking(marking, options.sdtp, stage_layers, len(examples), options.saliency,
                                          options.max_length)
    order = BatchOrder(len(examples), options.batch_size, processes.world, processes.rank, options.seed)

    objective = PredictorObjective(model, options.sdtp, predictors, options.loss, normalizer=processes.mean)
    step_fn = DistributedDataParallel(objective) if processes.distributed else objective
    optimizer = torch.optim.AdamW(predictors.parameters(), lr=options.lr, weight_decay=options.weight_decay)

    def schedule(step: int) -> float:
        return warmup_cosine(step, options.warmup_steps, options.max_steps, constant=options.lr_schedule == "constant")

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    # What fixes the run's computation: a resume must match all of it. Not in it: max_steps, save_every, and how the
    # same computation is laid out (device, shard, checkpointing), which changes only float rounding.
    identity = {
        "sdtp_config": options.sdtp.to_dict(),
        "seed": options.seed,
        "global_batch": options.batch_size * processes.world,
        "num_records": len(examples),
        "num_stages": num_stages,
        "loss": dataclasses.asdict(options.loss),
        "optimiser": {name: getattr(options, name)
                      for name in ("lr", "weight_decay", "warmup_steps", "lr_schedule", "max_grad_norm")},
        "data": {"max_length": options.max_length, "text_field": options.text_field,
                 "saliency": dataclasses.asdict(saliency_options),  # in effect: given, the marking's or the default
                 "examples": examples_fingerprint(examples),
                 "marking": None if marking is None else marking_fingerprint(marking)},
        "model": {"dtype": options.dtype, "attention": options.attention, "weights": model_digest},
    }
    step = 0
    if options.resume:
        state = processes.from_main(
            lambda: load_checkpoint(out, identity, ("step", "predictors", "optimizer", "scheduler")))
        predictors.load_state_dict(state["predictors"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        if step > options.max_steps:
            raise ValueError(f"--resume: the checkpoint in {out} is at step {step}, past --max-steps "
                             f"{options.max_steps}; pass --max-steps {step} or more")
        for group in optimizer.param_groups:  # the checkpoint's lr follows its --max-steps, which may have changed
            group["lr"] = group["initial_lr"] * schedule(step)
    if processes.main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, TRAIN_OPTIONS_FILE), "w") as f:  # eval marks with the saliency options trained on
            f.write(dataclasses.replace(options, saliency=saliency_options).to_json())
        _trim_log(out, step)

    progress = tqdm(total=options.max_steps, initial=step, desc="sdtp train", disable=not processes.main)
    recent_gap: list[float] = []
    meter = StepMeter(device)
    try:
        while step < options.max_steps:
            meter.start()
            records = order.records(step)
            batch = collate([examples[r] for r in records], records).to(device)
            if marking is not None:
                saliency = batch_saliency(marking, batch)
            else:
                saliency = token_saliency(model, options.sdtp, batch, saliency_options)
            teacher = _unpruned_logits(model, batch) if options.loss.task == "kl" else None
            terms = step_fn(batch, saliency, teacher, _generators(options.seed, step, records, device))

            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            # The norm also when nothing is clipped (max_norm inf): a finite loss can still have an infinite
            # gradient, which clipping would turn into NaN weights. One check of both, before anything changes.
            grad_norm = torch.nn.utils.clip_grad_norm_(
                predictors.parameters(), options.max_grad_norm if options.max_grad_norm > 0 else math.inf)
            if not processes.all_finite(torch.stack([terms["loss"].detach().float(), grad_norm.float()])):
                values = ", ".join(f"{name} {float(value.detach()):.4g}" for name, value in terms.items())
                _stop_on_nonfinite(step + 1, f"the training loss or its gradient is not finite ({values}, gradient "
                                   f"norm {float(grad_norm):.4g})", examples, records, out)
            lr = optimizer.param_groups[0]["lr"]  # what this step uses
            optimizer.step()
            # Finite gradients can still overflow the weights (a huge learning rate): checked before a checkpoint.
            if not processes.all_finite(torch.stack([p.detach().abs().amax() for p in predictors.parameters()])):
                _stop_on_nonfinite(step + 1, f"the optimiser step made predictor weights not finite (learning rate "
                                   f"{lr:.4g})", examples, records, out)
            scheduler.step()
            step += 1

            names = list(terms)
            values = processes.mean(torch.stack([terms[name].detach().float() for name in names])).tolist()
            metrics = dict(zip(names, values))
            measured = meter.stop(batch.attention_mask.sum(), processes)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}",
                                 kept=f"{metrics['kept']:.3f}/{metrics['kept_target']:.3f}",
                                 tok_s=f"{measured['tokens_per_s']:.0f}", peak=f"{measured['peak_mem_mib']:.0f}MiB")
            recent_gap = (recent_gap + [metrics["kept"] - metrics["kept_target"]])[-KEPT_GAP_STEPS:]
            if processes.main:
                with open(os.path.join(out, LOG_FILE), "a") as f:
                    f.write(strict_json({"step": step, "lr": lr, **metrics, **measured}) + "\n")
                if step == options.max_steps or (options.save_every and step % options.save_every == 0):
                    save_checkpoint(out, {
                        "identity": identity,
                        "step": step,
                        "data_position": order.position(step),
                        "predictors": predictors.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    })
    finally:
        progress.close()
    if processes.main:
        save_sdtp(model, out)
        write_summary(out, LOG_FILE, {"sdtp": options.sdtp.to_dict(), "loss": dataclasses.asdict(options.loss),
                                      "records": len(examples), "skipped_records": examples.skipped})
        gap = sum(recent_gap) / len(recent_gap) if recent_gap else 0.0
        if gap > KEPT_GAP_WARNING:
            warnings.warn(f"over the last {len(recent_gap)} steps the training masks kept {gap:.2f} more of the prompt "
                          "than the schedule: the task loss outweighs the keep-ratio term and never saw the "
                          "schedule's pruning; consider a larger ratio weight (--ratio-weight)", stacklevel=2)
    processes.wait_for_all()  # no process returns before process 0 has written the results
    return model
