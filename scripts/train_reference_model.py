#!/usr/bin/env python
"""Train the project's reference model: a small LlamaForCausalLM, from scratch, on the synthetic retrieval task.

No weights can be downloaded, so the quality experiments of SDTP (DESIGN §5.3, issue 5) run on a model trained here:
a 12-layer, hidden-128 Llama on :mod:`sdtp_kernels.tasks.retrieval` (``n_pairs`` pairs ``KEY k v`` at random places
among filler, then ``n_queries`` queries ``QUERY k v``, the last one without its value: that value is the answer, the
next token). CPU, fp32, AdamW with linear warm-up and cosine decay, an adaptive curriculum on the prompt length
(promote when the running train accuracy reaches ``--promote-acc``), loss on every answer or on the whole query
section (``--loss-on``), periodic held-out answer accuracy, resumable checkpoints (``--work-dir``; rerun the same
command to resume), early stop at ``--target-acc``, and induction warm-up rows (``--aux-copy-rows``: a repeated random
segment, the copy mechanism retrieval needs).

Retrieval-depth shaping (``--late-layer``): a model trained only for accuracy may read its needle in layer 0 (the value
tokens are a vocabulary class of their own, so one attention hop finds them), and then pruning from layer 4 on cannot
matter. ``--late-rows`` rows of each batch hide the needle's three tokens as attention keys from ``--late-layer`` on,
with the answer pushed away from the true value, and ``--early-blind-rows`` rows hide it below ``--late-layer`` with
the ordinary target. A single-needle model trained so (in this repository's history) came to need the needle at
layers >= 7. The committed multi-pair model needs no shaping: hiding random tokens from layer 4 on already costs it
most of its answers (``pruning_probe`` in its train_log.json).

Writes ``--out`` (default ``models/reference/``): ``config.json`` + ``model.safetensors`` (``save_pretrained``,
``--save-dtype``, default float16), ``generation_config.json``, ``task.json`` (generator settings, vocabulary, the
held-out split, the answer accuracy and each query's accuracy) and ``train_log.json`` (loss / accuracy curves, wall
time, command, final accuracy, and a pruning probe: accuracy when random tokens are hidden from the stage layers on,
vs. with the answer's pair forced in).

The committed model, three runs of two CPU threads (about 24, 17 and 16 minutes; ``train_log_phase1.json``,
``train_log_phase2.json`` and ``train_log.json``)::

    # 1: four pairs, four queries, induction warm-up, 64 then 128 tokens
    python scripts/train_reference_model.py --out runs/multikey_model --work-dir runs/multikey --seq-len 128 \
        --n-pairs 4 --n-queries 4 --loss-on answers --curriculum 64,128 --aux-copy-rows 8 --threads 2 \
        --time-budget-min 40 --max-steps 4000 --probe-size 0 --final-eval-size 200 --eval-every 200 --no-progress
    # 2: the same task at 128 tokens only
    python scripts/train_reference_model.py --out runs/multikey128_model --work-dir runs/multikey128 \
        --init-from runs/multikey/ckpt.pt --seq-len 128 --n-pairs 4 --n-queries 4 --loss-on answers \
        --curriculum 128 --lr 1e-3 --warmup 50 --threads 2 --time-budget-min 18 --max-steps 3000 --probe-size 200 \
        --final-eval-size 200 --eval-every 200 --no-progress
    # 3: sixteen pairs, all sixteen asked; models/reference/ is runs/kv16_model/ plus the logs of runs 1 and 2
    python scripts/train_reference_model.py --out runs/kv16_model --work-dir runs/kv16 \
        --init-from runs/multikey128/ckpt.pt --seq-len 128 --n-pairs 16 --n-queries 16 --loss-on answers \
        --curriculum 128 --lr 1e-3 --warmup 50 --threads 2 --time-budget-min 40 --max-steps 3000 --probe-size 200 \
        --final-eval-size 400 --eval-every 200 --no-progress
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

def _load_retrieval_module():
    """Load sdtp_kernels/tasks/retrieval.py by path: it is stdlib-only, and this keeps training independent of the
    compiled extension that ``import sdtp_kernels`` loads (so a rebuild of ``_C`` cannot break a long run)."""
    import importlib.util

    name = "sdtp_kernels.tasks.retrieval"
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdtp_kernels", "tasks", "retrieval.py")
    spec = importlib.util.spec_from_file_location("_sdtp_retrieval_task", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


_retrieval = _load_retrieval_module()
RetrievalTask, RetrievalTaskConfig = _retrieval.RetrievalTask, _retrieval.RetrievalTaskConfig

EVAL_SEED_OFFSET = 1_000_003  # held-out prompts: same generator, seed = train seed + this offset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/reference")
    p.add_argument("--work-dir", default="runs/train_reference", help="checkpoints for --resume (not committed)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --work-dir")
    # task
    p.add_argument("--seq-len", type=int, default=256, help="final (evaluation) prompt length")
    p.add_argument("--n-pairs", type=int, default=1)
    p.add_argument("--n-queries", type=int, default=1)
    p.add_argument("--n-keys", type=int, default=64)
    p.add_argument("--n-values", type=int, default=64)
    p.add_argument("--n-filler", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curriculum", default="32,64,128,256", help="comma-separated prompt lengths, last = --seq-len")
    p.add_argument("--promote-acc", type=float, default=0.9, help="move to the next length when the running train answer accuracy reaches this")
    p.add_argument("--promote-window", type=int, default=20, help="steps averaged for --promote-acc")
    p.add_argument("--min-stage-steps", type=int, default=50)
    # model
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--max-position", type=int, default=2048)
    p.add_argument("--init-std", type=float, default=0.02, help="initializer_range")
    # optimisation
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=3000, help="length of the cosine schedule and hard stop")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--loss-on", choices=["answers", "query"], default="query",
                   help="answers: the value token of every query; query: every token of the query section")
    p.add_argument("--aux-copy-rows", type=int, default=0,
                   help="rows of each batch replaced by a repeated random segment (loss on the repeat): an induction "
                        "warm-up, the same copy mechanism that retrieval needs; used in the first --aux-stages stages")
    p.add_argument("--aux-stages", type=int, default=1)
    p.add_argument("--aux-weight", type=float, default=1.0)
    p.add_argument("--late-layer", type=int, default=-1,
                   help="retrieval-depth shaping: in --late-rows rows of each batch the target pair (KEY k v) is hidden "
                        "as attention keys from this layer on, and the answer distribution is pushed to uniform over "
                        "the values; so the model may read the needle only at layers >= this (as retrieval heads of "
                        "real LLMs sit in middle/late layers), and pruning it before then loses the answer. <0 = off")
    p.add_argument("--late-rows", type=int, default=8)
    p.add_argument("--late-max-acc", type=float, default=0.1,
                   help="early stop also needs the held-out accuracy with the needle hidden from --late-layer on <= this")
    p.add_argument("--late-weight", type=float, default=1.0)
    p.add_argument("--early-blind-rows", type=int, default=0,
                   help="rows (ordinary targets) whose needle is hidden as keys *below* --late-layer: the only route "
                        "left is a late read, which gives that route a strong gradient")
    p.add_argument("--late-target", choices=["not-answer", "uniform"], default="not-answer",
                   help="needle-hidden rows: cross-entropy to the uniform distribution over the values other than the "
                        "answer (the answer must not win without the needle) or over all values")
    p.add_argument("--init-from", default="", help="start from the model weights of a checkpoint (ckpt.pt) or a "
                   "save_pretrained directory, with a fresh optimizer and schedule")
    p.add_argument("--time-budget-min", type=float, default=60.0, help="stop (and save) after this much training wall time; 0 = none")
    p.add_argument("--stop-at-step", type=int, default=0, help="stop (and save) at this step, schedule unchanged; 0 = none")
    # eval / io
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--final-eval-size", type=int, default=1000)
    p.add_argument("--target-acc", type=float, default=0.97, help="early stop when held-out accuracy at --seq-len reaches this")
    p.add_argument("--ckpt-every-s", type=float, default=180.0)
    p.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe-size", type=int, default=500, help="prompts for the final pruning probe (0 = skip)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_model(a, vocab_size):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        max_position_embeddings=a.max_position,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=a.init_std,
    )
    torch.manual_seed(a.seed)
    return LlamaForCausalLM(cfg)


def make_batch(task: RetrievalTask, start: int, count: int, return_examples: bool = False):
    exs = task.examples(start, count)
    full = torch.tensor([e.full_sequence() for e in exs], dtype=torch.long)
    if return_examples:
        return full[:, :-1].contiguous(), full[:, 1:].contiguous(), exs
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


def make_copy_batch(vocab_size: int, seq_len: int, count: int, seed: int):
    """[BOS] + seg + seg[:seq_len - h] with h = seq_len // 2 random non-special tokens; returns inputs, targets and
    the target positions predictable by copying (the repeat, after its first token)."""
    g = torch.Generator().manual_seed(seed)
    h = seq_len // 2
    seg = torch.randint(_retrieval.NUM_SPECIAL, vocab_size, (count, h), generator=g)
    full = torch.cat([torch.full((count, 1), _retrieval.BOS), seg, seg[:, : seq_len - h]], dim=1)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous(), list(range(h + 1, seq_len))


def hide_needle_hooks(model, exs, rows, from_layer, early_rows=()):
    """Forward pre-hooks hiding the target pair's tokens as attention keys: for the batch rows in ``rows`` in every
    layer >= from_layer, for the rows in ``early_rows`` in every layer < from_layer (other rows: plain causal mask).
    Returns the hook handles."""
    B, L = len(exs), len(exs[0].input_ids)
    neg = torch.finfo(torch.float32).min

    def build(rs):
        allowed = torch.tril(torch.ones(L, L, dtype=torch.bool)).expand(B, L, L).clone()
        for r in rs:
            e = exs[r]
            allowed[r, :, [e.key_position - 1, e.key_position, e.answer_position]] = False
        return torch.zeros(B, 1, L, L).masked_fill(~allowed[:, None], neg)

    late_mask = build(rows) if len(rows) else None
    early_mask = build(early_rows) if len(early_rows) else None
    handles = []
    for li, layer in enumerate(model.model.layers):
        m = late_mask if li >= from_layer else early_mask
        if m is None:
            continue

        def hook(mod, args, kwargs, m=m):
            kwargs["attention_mask"] = m
            return args, kwargs

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = min(1.0, (step - a.warmup) / max(1, a.max_steps - a.warmup))
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(model, task: RetrievalTask, count: int, batch_size: int = 64, layer_masks_fn=None) -> float:
    """Answer accuracy: argmax of the last prompt position's logits == the answer token."""
    model.eval()
    correct = 0
    for s in range(0, count, batch_size):
        exs = task.examples(s, min(batch_size, count - s))
        ids = torch.tensor([e.input_ids for e in exs], dtype=torch.long)
        ans = torch.tensor([e.answer[0] for e in exs], dtype=torch.long)
        handles = layer_masks_fn(model, exs) if layer_masks_fn else []
        try:
            logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
        finally:
            for h in handles:
                h.remove()
        correct += (logits.argmax(-1) == ans).sum().item()
    model.train()
    return correct / count


@torch.no_grad()
def query_accuracies(model, task: RetrievalTask, count: int, batch_size: int = 64) -> list[float]:
    """Accuracy of each query's value, in query order (the last one is the prompt's answer). The in-place answers
    say how the model solves the task: by looking the key up (all high) or by elimination (rising with the number
    of values already named: the last query's pair is the only one not yet asked for when n_queries = n_pairs)."""
    model.eval()
    correct = torch.zeros(task.config.n_queries)
    positions = task.answer_target_positions()
    for s in range(0, count, batch_size):
        inp, tgt = make_batch(task, s, min(batch_size, count - s))
        logits = model(input_ids=inp).logits[:, positions]
        correct += (logits.argmax(-1) == tgt[:, positions]).sum(0)
    model.train()
    return [c / count for c in correct.tolist()]


# ---- pruning probe: hide tokens as keys from the SDTP stage layers on (the masked simulation of DESIGN §5.2) ----
def _stage_keep_sets(exs, n_layers, keep_ratio, start_layer=4, layer_step=3, num_sink=4, local_ratio=0.1,
                     keep_answer=False, seed=0):
    stages = list(range(start_layer, n_layers, layer_step))
    g = torch.Generator().manual_seed(seed)
    L = len(exs[0].input_ids)
    keeps = []  # [B, n_stages, L] bool
    for e in exs:
        n_local = math.ceil(local_ratio * L)
        prot = set(range(min(num_sink, L))) | set(range(L - n_local, L))
        if keep_answer:
            prot |= {e.key_position - 1, e.key_position, e.answer_position}
        rest = [i for i in torch.randperm(L, generator=g).tolist() if i not in prot]
        per_stage = []
        for s in range(1, len(stages) + 1):
            c = max(math.ceil(keep_ratio ** s * L), len(prot))
            m = torch.zeros(L, dtype=torch.bool)
            m[sorted(prot)] = True
            m[rest[: c - len(prot)]] = True
            per_stage.append(m)
        keeps.append(torch.stack(per_stage))
    return stages, torch.stack(keeps)


def random_prune_hooks(keep_ratio, keep_answer=False, seed=0, start_layer=4, layer_step=3):
    def install(model, exs):
        n_layers = model.config.num_hidden_layers
        stages, keeps = _stage_keep_sets(exs, n_layers, keep_ratio, start_layer=start_layer, layer_step=layer_step,
                                         keep_answer=keep_answer, seed=seed)
        L = keeps.shape[-1]
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
        neg = torch.finfo(torch.float32).min
        handles = []
        for li, layer in enumerate(model.model.layers):
            s = sum(1 for st in stages if st <= li)
            if s == 0:
                continue
            allowed = causal[None] & keeps[:, s - 1][:, None, :]  # [B, Lq, Lk]
            mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, neg)[:, None]

            def hook(mod, args, kwargs, mask=mask):
                kwargs["attention_mask"] = mask
                return args, kwargs

            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    return install


def pruning_probe(model, task, count, start_layers=(4, 2, 1), layer_step=3):
    """Accuracy with tokens hidden as keys from each stage layer on (stages start_layer, +layer_step, ...; stage s
    keeps ceil(r**s * L), first 4 and last 10% protected): random keep sets vs. random with the answer pair forced in.
    A large gap means the model still needs the answer tokens at those layers, so blind pruning loses the answer."""
    out = {}
    for sl in start_layers:
        for r in (0.9, 0.7):
            for keep_answer in (False, True):
                name = f"start{sl}_step{layer_step}_keep{r}_" + ("answer_pair_kept" if keep_answer else "random")
                out[name] = evaluate(model, task, count, layer_masks_fn=random_prune_hooks(
                    r, keep_answer, seed=1, start_layer=sl, layer_step=layer_step))
    return out


# ---- checkpointing ----
def save_ckpt(path, model, opt, state):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from tqdm import tqdm
    from transformers import GenerationConfig

    lengths = [int(x) for x in a.curriculum.split(",")] if a.curriculum else [a.seq_len]
    if lengths[-1] != a.seq_len:
        lengths.append(a.seq_len)
    base = RetrievalTaskConfig(seq_len=a.seq_len, n_pairs=a.n_pairs, n_queries=a.n_queries, n_keys=a.n_keys,
                               n_values=a.n_values, n_filler=a.n_filler, seed=a.seed)
    tasks = [RetrievalTask(replace(base, seq_len=L)) for L in lengths]
    eval_tasks = [RetrievalTask(replace(base, seq_len=L, seed=a.seed + EVAL_SEED_OFFSET)) for L in lengths]
    final_eval = eval_tasks[-1]

    model = build_model(a, base.vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.98), eps=1e-8)

    os.makedirs(a.work_dir, exist_ok=True)
    ckpt_path = os.path.join(a.work_dir, "ckpt.pt")
    state = {"step": 0, "stage": 0, "stage_start": 0, "next_index": 0, "elapsed_s": 0.0, "log": [], "evals": [],
             "recent_acc": [], "stage_history": [{"step": 0, "seq_len": lengths[0]}], "done": False,
             "args": vars(a)}
    if a.init_from and not (os.path.exists(ckpt_path) and not a.no_resume):
        if os.path.isdir(a.init_from):
            from transformers import LlamaForCausalLM

            sd = LlamaForCausalLM.from_pretrained(a.init_from, dtype=torch.float32).state_dict()
        else:
            sd = torch.load(a.init_from, map_location="cpu", weights_only=False)["model"]
        model.load_state_dict(sd)
        print(f"initialised the weights from {a.init_from}", flush=True)
    if os.path.exists(ckpt_path) and not a.no_resume:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
        print(f"resumed from {ckpt_path} at step {state['step']} (stage {state['stage']}, "
              f"{state['elapsed_s'] / 60:.1f} min trained)", flush=True)
    print(f"model: {n_params / 1e6:.2f}M params, {a.layers} layers, hidden {a.hidden}; vocab {base.vocab_size}; "
          f"curriculum {lengths}; threads {torch.get_num_threads()}", flush=True)

    tgt_kind = "answers" if a.loss_on == "answers" else "query"
    model.train()
    t_last_ckpt = time.time()
    t_start = time.time() - state["elapsed_s"]
    pbar = tqdm(total=a.max_steps, initial=state["step"], disable=a.no_progress, mininterval=5, dynamic_ncols=True)
    stop_reason = "max_steps"
    if a.stop_at_step and state["step"] >= a.stop_at_step:
        state["done"], stop_reason = True, "stop_at_step"
    while state["step"] < a.max_steps and not state["done"]:
        step = state["step"]
        task = tasks[state["stage"]]
        n_aux = a.aux_copy_rows if state["stage"] < a.aux_stages else 0
        n_ret = a.batch_size - n_aux
        inp, tgt, exs = make_batch(task, state["next_index"], n_ret, return_examples=True)
        n_late = a.late_rows if a.late_layer >= 0 else 0
        n_blind = a.early_blind_rows if a.late_layer >= 0 else 0
        state["next_index"] += n_ret
        if n_aux:
            cin, ctgt, cpos = make_copy_batch(base.vocab_size, task.config.seq_len, n_aux, seed=a.seed * 7919 + step)
            inp, tgt = torch.cat([inp, cin]), torch.cat([tgt, ctgt])
        pos = task.answer_target_positions() if tgt_kind == "answers" else task.query_target_positions()
        ans_pos = task.answer_target_positions()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        # rows [0, n_late) of the retrieval rows are the needle-hidden ones; [n_late, n_ret) are plain
        handles = hide_needle_hooks(model, exs + [exs[0]] * n_aux, range(n_late), a.late_layer,
                                    early_rows=range(n_late, n_late + n_blind)) if (n_late or n_blind) else []
        try:
            logits = model(input_ids=inp).logits  # [B, L, V]
        finally:
            for h in handles:
                h.remove()
        sel = logits[n_late:n_ret, pos]
        loss = F.cross_entropy(sel.reshape(-1, sel.shape[-1]), tgt[n_late:n_ret, pos].reshape(-1))
        total, aux_l, late_l = loss, 0.0, 0.0
        if n_late:
            c = task.config
            lp = F.log_softmax(logits[:n_late, ans_pos[-1]], dim=-1)[:, c.value_offset:c.value_offset + c.n_values]
            if a.late_target == "uniform":
                late = -lp.mean()  # cross-entropy to the uniform distribution over the values
            else:  # ... over the values other than the answer
                keep = torch.ones_like(lp, dtype=torch.bool)
                keep[torch.arange(n_late), tgt[:n_late, ans_pos[-1]] - c.value_offset] = False
                late = -(lp * keep).sum(-1).div(keep.sum(-1)).mean()
            total, late_l = total + a.late_weight * late, late.item()
        if n_aux:
            csel = logits[n_ret:, cpos]
            aux = F.cross_entropy(csel.reshape(-1, csel.shape[-1]), tgt[n_ret:, cpos].reshape(-1))
            total, aux_l = loss + a.aux_weight * aux, aux.item()
        opt.zero_grad(set_to_none=True)
        total.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip).item()
        opt.step()
        with torch.no_grad():
            acc_last = (logits[n_late:n_ret, ans_pos[-1]].argmax(-1) == tgt[n_late:n_ret, ans_pos[-1]]).float().mean().item()
            acc_all = (logits[n_late:n_ret, ans_pos].argmax(-1) == tgt[n_late:n_ret, ans_pos]).float().mean().item()
            acc_hidden = (logits[:n_late, ans_pos[-1]].argmax(-1) == tgt[:n_late, ans_pos[-1]]).float().mean().item() if n_late else 0.0
        state["step"] = step = step + 1
        state["elapsed_s"] = time.time() - t_start
        state["recent_acc"] = (state["recent_acc"] + [acc_all])[-a.promote_window:]
        state["log"].append({"step": step, "loss": round(loss.item(), 5), "train_acc_last": round(acc_last, 4),
                             "train_acc_answers": round(acc_all, 4), "aux_copy_loss": round(aux_l, 4), "late_loss": round(late_l, 4), "acc_needle_hidden": round(acc_hidden, 4), "seq_len": task.config.seq_len,
                             "lr": lr_at(step - 1, a), "grad_norm": round(gn, 4), "elapsed_s": round(state["elapsed_s"], 1)})
        pbar.update(1)
        pbar.set_postfix(L=task.config.seq_len, loss=f"{loss.item():.3f}", acc=f"{sum(state['recent_acc']) / len(state['recent_acc']):.2f}",
                         lr=f"{lr_at(step - 1, a):.1e}")
        if a.no_progress and step % 10 == 0:
            print(f"step {step} L={task.config.seq_len} loss {loss.item():.4f} acc {sum(state['recent_acc']) / len(state['recent_acc']):.3f} "
                  f"late {late_l:.3f} hid_acc {acc_hidden:.2f} lr {lr_at(step - 1, a):.2e} gn {gn:.2f} t {state['elapsed_s']:.0f}s", flush=True)

        # curriculum: promote on running train accuracy
        if (state["stage"] < len(lengths) - 1 and step - state["stage_start"] >= a.min_stage_steps
                and len(state["recent_acc"]) >= a.promote_window
                and sum(state["recent_acc"]) / len(state["recent_acc"]) >= a.promote_acc):
            state["stage"] += 1
            state["stage_start"] = step
            state["recent_acc"] = []
            state["stage_history"].append({"step": step, "seq_len": lengths[state["stage"]]})
            tqdm.write(f"[step {step}] curriculum -> seq_len {lengths[state['stage']]}")

        if step % a.eval_every == 0 or step == a.max_steps:
            ev = {"step": step, "elapsed_s": round(state["elapsed_s"], 1), "stage_seq_len": task.config.seq_len}
            if state["stage"] >= len(lengths) - 2:
                ev[f"acc@{a.seq_len}"] = evaluate(model, final_eval, a.eval_size)
                if a.late_layer >= 0:
                    ev[f"acc_needle_hidden_from{a.late_layer}@{a.seq_len}"] = evaluate(
                        model, final_eval, a.eval_size, layer_masks_fn=lambda m, exs: hide_needle_hooks(m, exs, range(len(exs)), a.late_layer))
            if state["stage"] < len(lengths) - 1:
                ev[f"acc@{task.config.seq_len}"] = evaluate(model, eval_tasks[state["stage"]], a.eval_size)
            state["evals"].append(ev)
            tqdm.write(f"[eval] {json.dumps(ev)}")
            late_ok = a.late_layer < 0 or ev.get(f"acc_needle_hidden_from{a.late_layer}@{a.seq_len}", 1.0) <= a.late_max_acc
            if state["stage"] == len(lengths) - 1 and ev.get(f"acc@{a.seq_len}", 0.0) >= a.target_acc and late_ok:
                # confirm on a larger held-out set before stopping
                conf = evaluate(model, final_eval, a.final_eval_size)
                tqdm.write(f"[eval] confirm on {a.final_eval_size}: {conf:.4f}")
                ev["confirm"] = conf
                if conf >= a.target_acc:
                    state["done"] = True
                    stop_reason = "target_acc"
        if a.stop_at_step and step >= a.stop_at_step:
            state["done"] = True
            stop_reason = "stop_at_step"
        if a.time_budget_min and state["elapsed_s"] >= a.time_budget_min * 60:
            state["done"] = True
            stop_reason = "time_budget"
        if time.time() - t_last_ckpt >= a.ckpt_every_s or state["done"] or step == a.max_steps:
            save_ckpt(ckpt_path, model, opt, state)
            t_last_ckpt = time.time()
    pbar.close()
    if state["step"] >= a.max_steps and not state.get("stop_reason"):
        stop_reason = "max_steps"
    state["stop_reason"] = state.get("stop_reason") or stop_reason
    save_ckpt(ckpt_path, model, opt, state)
    train_wall = state["elapsed_s"]

    # ---- save the model ----
    os.makedirs(a.out, exist_ok=True)
    dtype = getattr(torch, a.save_dtype)
    model.eval()
    model.config.use_cache = True
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False)
    model.to(dtype).save_pretrained(a.out, safe_serialization=True)
    model.to(torch.float32)

    # reload exactly as users will, and measure from the file
    from transformers import LlamaForCausalLM

    reloaded = LlamaForCausalLM.from_pretrained(a.out, dtype=torch.float32)
    per_query = query_accuracies(reloaded, final_eval, a.final_eval_size)
    final_acc = per_query[-1]  # the last query's value is the prompt's answer
    print(f"final held-out accuracy @ {a.seq_len} (reloaded {a.save_dtype} -> float32, {a.final_eval_size} prompts): {final_acc:.4f}", flush=True)
    print(f"accuracy of each query's value, in query order: {[round(v, 4) for v in per_query]}", flush=True)
    probe = pruning_probe(reloaded, final_eval, a.probe_size) if a.probe_size else {}
    if probe:
        print(f"pruning probe (masked, stages 4/7/10, sink 4, local 10%): {json.dumps(probe)}", flush=True)

    task_json = {
        "task": base.to_dict(),
        "generator": "sdtp_kernels.tasks.retrieval.RetrievalTask",
        "train_seed": a.seed,
        "heldout_seed": a.seed + EVAL_SEED_OFFSET,
        "curriculum": lengths,
        "prompt_format": "BOS, context of filler with n_pairs 'KEY k v' at random places, then n_queries 'QUERY k v' "
                         "with the last value missing; answer = that value (next token after the prompt)",
        "answer_accuracy": {"seq_len": a.seq_len, "prompts": a.final_eval_size, "accuracy": final_acc,
                            "per_query": per_query,
                            "dtype_evaluated": "float32 (loaded from the saved %s weights)" % a.save_dtype},
    }
    with open(os.path.join(a.out, "task.json"), "w") as f:
        json.dump(task_json, f, indent=2)
    cmd = " ".join(shlex.quote(x) for x in ["python", *sys.argv])
    log = {
        "command": cmd,
        "args": vars(a),
        "n_params": n_params,
        "steps": state["step"],
        "stop_reason": state["stop_reason"],
        "train_wall_time_s": round(train_wall, 1),
        "threads": a.threads,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "final_accuracy": final_acc,
        "per_query_accuracy": per_query,
        "pruning_probe": probe,
        "curriculum_history": state["stage_history"],
        "evals": state["evals"],
        "train_curve": state["log"][:: max(1, len(state["log"]) // 500)] + state["log"][-1:],
    }
    with open(os.path.join(a.out, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    for fn in sorted(os.listdir(a.out)):
        print(f"  {os.path.join(a.out, fn)}: {os.path.getsize(os.path.join(a.out, fn)) / 1e6:.2f} MB")
    return final_acc


if __name__ == "__main__":
    main()
