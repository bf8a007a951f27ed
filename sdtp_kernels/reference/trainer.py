"""The reference model's training loop: a LlamaForCausalLM from scratch on the retrieval task, fp32 on the CPU,
AdamW with the package's warm-up + cosine schedule, an adaptive curriculum on the prompt length (promote when the
running train accuracy reaches `promote_acc`), loss on every answer or on the whole query section, optional
induction rows (a repeated random segment: the copy mechanism retrieval needs), periodic held-out accuracy, an early
stop at `target_acc`, a time budget, and a checkpoint (`train.checkpoint`) that a rerun of the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..eval.prompts import retrieval_prompts
from ..eval.quality import answer_accuracy
from ..tasks.retrieval import BOS, NUM_SPECIAL, RetrievalTask, RetrievalTaskConfig
from ..train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from ..train.lr import warmup_cosine
from .measures import full_batch

EVAL_SEED_OFFSET = 1_000_003  # held-out prompts: the same generator, seed = train seed + this offset
# The arguments that fix what a run computes: a checkpoint resumes only a run with the same ones.
IDENTITY = ("seq_len", "n_pairs", "n_queries", "n_keys", "n_values", "n_filler", "seed", "curriculum", "layers",
            "hidden", "heads", "kv_heads", "intermediate", "batch_size", "max_steps", "loss_on", "aux_copy_rows")


def curriculum(args: argparse.Namespace) -> list[int]:
    lengths = [int(x) for x in args.curriculum.split(",")] if args.curriculum else [args.seq_len]
    return lengths if lengths[-1] == args.seq_len else lengths + [args.seq_len]


def task_config(args: argparse.Namespace) -> RetrievalTaskConfig:
    return RetrievalTaskConfig(seq_len=args.seq_len, n_pairs=args.n_pairs, n_queries=args.n_queries,
                               n_keys=args.n_keys, n_values=args.n_values, n_filler=args.n_filler, seed=args.seed)


def build_model(args: argparse.Namespace, vocab_size: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_position, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=BOS,
        eos_token_id=2, pad_token_id=0, initializer_range=args.init_std,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


def copy_batch(vocab_size: int, seq_len: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """[BOS] + segment + segment[:seq_len - h], h = seq_len // 2 random non-special tokens: inputs, targets and the
    target positions predictable by copying (the repeat, after its first token)."""
    generator = torch.Generator().manual_seed(seed)
    half = seq_len // 2
    segment = torch.randint(NUM_SPECIAL, vocab_size, (count, half), generator=generator)
    full = torch.cat([torch.full((count, 1), BOS), segment, segment[:, : seq_len - half]], dim=1)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous(), list(range(half + 1, seq_len))


def _optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-8)


def _initial_weights(path: str) -> dict[str, torch.Tensor]:
    """Weights to start from: a model directory (save_pretrained) or a run's work directory / checkpoint file."""
    if os.path.isfile(os.path.join(path, "config.json")):
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    file = path if os.path.isfile(path) else checkpoint_path(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--init-from {path}: neither a model directory nor a reference-model checkpoint")
    return torch.load(file, map_location="cpu", weights_only=True)["model"]


def _held_out_accuracy(model: nn.Module, task: RetrievalTask, count: int) -> float:
    model.eval()
    try:
        return answer_accuracy(model, retrieval_prompts(task, count))
    finally:
        model.train()


class ReferenceRun:
    """One training run: its tasks, model, optimiser and resumable state."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.lengths = curriculum(args)
        self.base = task_config(args)
        self.tasks = [RetrievalTask(dataclasses.replace(self.base, seq_len=n)) for n in self.lengths]
        self.eval_tasks = [RetrievalTask(dataclasses.replace(self.base, seq_len=n, seed=args.seed + EVAL_SEED_OFFSET))
                           for n in self.lengths]
        self.model = build_model(args, self.base.vocab_size)
        self.optimizer = _optimizer(self.model, args)
        self.identity = {name: getattr(args, name) for name in IDENTITY}
        self.state: dict[str, Any] = {"step": 0, "stage": 0, "stage_start": 0, "next_index": 0, "elapsed_s": 0.0,
                                      "recent_acc": [], "first": None, "recent": [], "evals": [],
                                      "stage_history": [{"step": 0, "seq_len": self.lengths[0]}], "done": False,
                                      "stop_reason": None}
        self.resumed = False
        if os.path.isfile(checkpoint_path(args.work_dir)) and not args.no_resume:
            saved = load_checkpoint(args.work_dir, self.identity, ("model", "optimizer", "state", "torch_rng"))
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["torch_rng"])
            self.state, self.resumed = saved["state"], True
        elif args.init_from:
            self.model.load_state_dict(_initial_weights(args.init_from))

    def save(self) -> None:
        os.makedirs(self.args.work_dir, exist_ok=True)
        save_checkpoint(self.args.work_dir, {"identity": self.identity, "model": self.model.state_dict(),
                                             "optimizer": self.optimizer.state_dict(), "state": self.state,
                                             "torch_rng": torch.get_rng_state()})

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int, list[int], list[int], Optional[list[int]]]:
        """inputs, targets, retrieval rows, their loss positions, answer positions, copy rows' loss positions."""
        a, state = self.args, self.state
        task = self.tasks[state["stage"]]
        copies = a.aux_copy_rows if state["stage"] < a.aux_stages else 0
        rows = a.batch_size - copies
        inputs, targets = full_batch(task.examples(state["next_index"], rows))
        state["next_index"] += rows
        copy_positions = None
        if copies:
            c_in, c_tgt, copy_positions = copy_batch(self.base.vocab_size, task.config.seq_len, copies,
                                                     seed=a.seed * 7919 + step)
            inputs, targets = torch.cat([inputs, c_in]), torch.cat([targets, c_tgt])
        answers = task.answer_target_positions()
        positions = answers if a.loss_on == "answers" else task.query_target_positions()
        return inputs, targets, rows, positions, answers, copy_positions

    def step(self) -> dict[str, float]:
        """One optimisation step; returns its log record."""
        a, state = self.args, self.state
        step = state["step"]
        inputs, targets, rows, positions, answers, copy_positions = self._batch(step)
        for group in self.optimizer.param_groups:
            group["lr"] = a.lr * warmup_cosine(step, a.warmup, a.max_steps, a.min_lr_ratio)
        logits = self.model(input_ids=inputs).logits  # [B, L, V]
        picked = logits[:rows, positions]
        loss = F.cross_entropy(picked.reshape(-1, picked.shape[-1]), targets[:rows, positions].reshape(-1))
        total, copy_loss = loss, 0.0
        if copy_positions is not None:
            copied = logits[rows:, copy_positions]
            aux = F.cross_entropy(copied.reshape(-1, copied.shape[-1]), targets[rows:, copy_positions].reshape(-1))
            total, copy_loss = loss + a.aux_weight * aux, aux.item()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip).item()
        self.optimizer.step()
        with torch.no_grad():
            hits = logits[:rows, answers].argmax(-1) == targets[:rows, answers]
        state["step"] = step + 1
        state["recent_acc"] = (state["recent_acc"] + [hits.float().mean().item()])[-a.promote_window:]
        return {"step": step + 1, "loss": loss.item(), "train_acc_last": hits[:, -1].float().mean().item(),
                "train_acc_answers": hits.float().mean().item(), "aux_copy_loss": copy_loss,
                "seq_len": self.tasks[state["stage"]].config.seq_len, "lr": self.optimizer.param_groups[0]["lr"],
                "grad_norm": grad_norm}

    def _promote(self) -> None:
        a, state = self.args, self.state
        recent = state["recent_acc"]
        if (state["stage"] < len(self.lengths) - 1 and state["step"] - state["stage_start"] >= a.min_stage_steps
                and len(recent) >= a.promote_window and sum(recent) / len(recent) >= a.promote_acc):
            state["stage"] += 1
            state["stage_start"], state["recent_acc"] = state["step"], []
            state["stage_history"].append({"step": state["step"], "seq_len": self.lengths[state["stage"]]})
            tqdm.write(f"[step {state['step']}] curriculum -> seq_len {self.lengths[state['stage']]}")

    def _evaluate(self) -> None:
        a, state = self.args, self.state
        record = {"step": state["step"], "elapsed_s": round(state["elapsed_s"], 1),
                  "stage_seq_len": self.lengths[state["stage"]]}
        final = f"acc@{a.seq_len}"
        if state["stage"] >= len(self.lengths) - 2:
            record[final] = _held_out_accuracy(self.model, self.eval_tasks[-1], a.eval_size)
        if state["stage"] < len(self.lengths) - 1:
            record[f"acc@{self.lengths[state['stage']]}"] = _held_out_accuracy(
                self.model, self.eval_tasks[state["stage"]], a.eval_size)
        if state["stage"] == len(self.lengths) - 1 and record.get(final, 0.0) >= a.target_acc:
            # Confirmed on a larger held-out set before stopping.
            record["confirm"] = _held_out_accuracy(self.model, self.eval_tasks[-1], a.final_eval_size)
            if record["confirm"] >= a.target_acc:
                state["done"], state["stop_reason"] = True, "target_acc"
        state["evals"].append(record)
        tqdm.write(f"[eval] {record}")

    def train(self) -> None:
        a, state = self.args, self.state
        self.model.train()
        started, last_save = time.time() - state["elapsed_s"], time.time()
        if a.stop_at_step and state["step"] >= a.stop_at_step:
            state["done"], state["stop_reason"] = True, "stop_at_step"
        bar = tqdm(total=a.max_steps, initial=state["step"], desc="sdtp reference-model", disable=a.no_progress,
                   mininterval=5, dynamic_ncols=True)
        while state["step"] < a.max_steps and not state["done"]:
            record = self.step()
            state["elapsed_s"] = time.time() - started
            record["elapsed_s"] = round(state["elapsed_s"], 1)
            state["first"] = state["first"] or record
            state["recent"] = (state["recent"] + [record])[-50:]
            bar.update(1)
            bar.set_postfix(L=record["seq_len"], loss=f"{record['loss']:.3f}", acc=f"{record['train_acc_answers']:.2f}")
            if a.no_progress and state["step"] % 10 == 0:
                print(f"step {state['step']} {record}", flush=True)
            self._promote()
            if state["step"] % a.eval_every == 0 or state["step"] == a.max_steps:
                self._evaluate()
            if a.stop_at_step and state["step"] >= a.stop_at_step:
                state["done"], state["stop_reason"] = True, "stop_at_step"
            if a.time_budget_min and state["elapsed_s"] >= a.time_budget_min * 60:
                state["done"], state["stop_reason"] = True, "time_budget"
            if time.time() - last_save >= a.ckpt_every_s or state["done"] or state["step"] == a.max_steps:
                self.save()
                last_save = time.time()
        bar.close()
        state["stop_reason"] = state["stop_reason"] or "max_steps"
        self.save()
