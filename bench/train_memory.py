"""Peak memory and time of one predictor-training step (docs/ARCHITECTURE.md §5.2) through each attention path:
eager attention (the reference), SDPA with the soft keep-policy as an additive log-mask, and SDPA with activation
checkpointing of the frozen layers. Each path runs in a fresh subprocess, so one path's allocations cannot hide
another's peak.

    python bench/train_memory.py                          # CPU preset: 16-layer hidden-512 Llama, 2048 tokens
    python bench/train_memory.py --out bench/results/train-memory.json

SDTP_BENCH_QUICK=1 makes the default length 256 tokens (to check that the benchmark runs, not to measure).

The step is what `sdtp train` does per batch without a marking: saliency marked on the fly (a forward and backward
of the unpruned model), the masked-simulation forward with Gumbel decisions, the backward to the predictors and an
optimiser step, on one record of 2048 tokens: a prompt and a 32-token answer that carries the loss (the prompt is
what SDTP prunes). Random weights: memory and time depend on the shapes, not on the values.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

ANSWER_TOKENS = 32
WARM_UP_TOKENS = 256
QUICK = os.environ.get("SDTP_BENCH_QUICK") == "1"
# glibc keeps freed blocks below its (adaptive) mmap threshold in its heap, so the resident size can stay up after
# the tensors are gone. Each path is measured as it runs by default ("rows") and with a fixed threshold that returns
# every large block at once, so that the resident size follows the live tensors ("rows_live").
ALLOCATORS = {"rows": {}, "rows_live": {"MALLOC_MMAP_THRESHOLD_": "65536"}}
PATHS = {"eager": ("eager", False), "sdpa": ("sdpa", False), "sdpa+checkpointing": ("sdpa", True)}


def one_step(path: str, device: str, tokens: int, threads: int) -> dict:
    """One training step through `path`, measured (run in the subprocess)."""
    from e2e import PRESETS, build_model

    from sdtp_kernels.config import SDTPConfig
    from sdtp_kernels.hf import apply_sdtp, sdtp_predictors
    from sdtp_kernels.measure import CLOCKS, measure
    from sdtp_kernels.train.activation_checkpointing import checkpoint_decoder_layers
    from sdtp_kernels.train.data import Example, collate
    from sdtp_kernels.train.objective import PredictorObjective
    from sdtp_kernels.train.options import LossOptions
    from sdtp_kernels.train.saliency import token_saliency

    torch.set_num_threads(threads)
    attention, checkpointing = PATHS[path]
    torch.manual_seed(0)
    model = build_model(PRESETS["cpu"], device).requires_grad_(False)
    model.set_attn_implementation(attention)
    sdtp = SDTPConfig()
    apply_sdtp(model, sdtp)
    predictors = sdtp_predictors(model).float().requires_grad_(True)
    if checkpointing:
        checkpoint_decoder_layers(model)
    objective = PredictorObjective(model, sdtp, predictors, LossOptions())
    optimizer = torch.optim.AdamW(predictors.parameters(), lr=1e-3)

    def step(length: int) -> None:
        ids = torch.randint(1, model.config.vocab_size, (length,)).tolist()
        prompt = length - ANSWER_TOKENS
        batch = collate([Example(ids, [-100] * prompt + ids[prompt:], prompt)], [0]).to(torch.device(device))
        saliency = token_saliency(model, sdtp, batch)
        terms = objective(batch, saliency, None, [torch.Generator(device=device).manual_seed(0)])
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    step(WARM_UP_TOKENS)  # first-call work (thread pools, kernel set-up, optimiser state) outside the measurement
    seconds, peak = measure(lambda: step(tokens), device, CLOCKS["wall"])
    return {"path": path, "peak_mem_mib": round(peak / 2**20, 1), "step_s": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokens", type=int, default=256 if QUICK else 2048,
                        help="sequence length of the one-row batch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--one", choices=sorted(PATHS), help=argparse.SUPPRESS)  # the subprocess's own row
    args = parser.parse_args()
    if args.tokens <= ANSWER_TOKENS or args.threads < 1:
        parser.error(f"--tokens must exceed the {ANSWER_TOKENS}-token answer and --threads be >= 1")
    if args.one:
        print(json.dumps(one_step(args.one, args.device, args.tokens, args.threads)))
        return

    from e2e import PRESETS, machine

    from sdtp_kernels.config import SDTPConfig
    from sdtp_kernels.files import utc_timestamp
    from sdtp_kernels.measure import peak_mem_method

    torch.set_num_threads(args.threads)  # what machine() records: the steps' own processes run with these

    result = {}
    for name, environment in ALLOCATORS.items():
        rows = []
        for path in PATHS:
            command = [sys.executable, __file__, "--one", path, "--device", args.device, "--tokens",
                       str(args.tokens), "--threads", str(args.threads)]
            child = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **environment})
            if child.returncode != 0:
                sys.exit(f"train_memory: the {path} path failed ({name}):\n{child.stderr}")
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{name:>19} {path:>18}: peak {rows[-1]['peak_mem_mib']:8.1f} MiB, step {rows[-1]['step_s']:.2f} s",
                  flush=True)
        result[name] = rows
        eager = rows[0]["peak_mem_mib"]
        result[f"peak_mem_ratio_vs_eager_{name}"] = {row["path"]: round(eager / row["peak_mem_mib"], 2)
                                                     for row in rows}
    result.update({
        "allocator": {"rows": "glibc's defaults",
                      "rows_live": "MALLOC_MMAP_THRESHOLD_=65536 (the resident size follows the live tensors)"},
        "tokens": args.tokens,
        "batch": 1,
        "model": {**PRESETS["cpu"]["model"], "dtype": str(PRESETS["cpu"]["dtype"])},
        "sdtp": SDTPConfig().to_dict(),
        "step": "saliency marked on the fly + masked-simulation forward + backward + AdamW step, in a fresh "
                f"process after one {WARM_UP_TOKENS}-token warm-up step",
        "record": f"one row: a {args.tokens - ANSWER_TOKENS}-token prompt and a {ANSWER_TOKENS}-token answer "
                  "(the loss)",
        "peak_mem_method": peak_mem_method(args.device),
        "threads": args.threads,
        "machine": machine(args.device),
        "date": utc_timestamp(),
    })
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
