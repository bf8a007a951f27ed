"""`sdtp demo`: a batch of long prompts through one model with and without SDTP, side by side — tokens kept per
stage, prefill and end-to-end latency, analytic FLOPs, peak memory, answers — as a table and a PNG plot.

By default it runs the reference model that installs with the package (a small Llama trained on a synthetic
key-value retrieval task, `sdtp_kernels.models.reference_model()`) with its trained predictors (its sdtp/);
--model/--predictors take any local checkpoint of a supported model instead (random prompts then, since no task
describes their answers)."""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from .measure import CLOCKS, flops, measure


def _prompts(model_dir: Path, batch: int, context: int | None, vocab_size: int, seed: int):
    """(input_ids [B, N], answers or None). Held-out task prompts when the model directory describes its task."""
    task_file = model_dir / "task.json"
    if task_file.exists():
        from .eval.prompts import task_prompts

        prompts = task_prompts(str(task_file), batch, seq_len=context)
        return torch.tensor([p.input_ids for p in prompts]), torch.tensor([p.answer for p in prompts])
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (batch, context or 4096), generator=generator), None


def _load(model_dir: Path, predictors: Path | None, device: str):
    from transformers import AutoModelForCausalLM

    from .hf import apply_sdtp

    if not model_dir.is_dir():
        raise FileNotFoundError(f"no model directory at {model_dir} (pass --model DIR)")
    predictors = predictors or model_dir / "sdtp"
    if not predictors.is_dir():
        raise FileNotFoundError(f"no trained predictors at {predictors} (pass --predictors DIR, written by "
                         "`sdtp train` or save_sdtp)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    model.generation_config.eos_token_id = None  # generate exactly the requested number of tokens
    model.generation_config.pad_token_id = 0
    return apply_sdtp(model, str(predictors))


def _kept_per_stage(model, ids: torch.Tensor) -> list[float]:
    """Mean tokens per row that each stage's layers hold after a prefill, read off the pruned KV cache."""
    from .hf import key_positions
    from .hf.model_call import output_cache

    cache = output_cache(model(ids, use_cache=True, logits_to_keep=1))
    return [float(ids.shape[1]) if k is None else (k >= 0).sum(1).float().mean().item() for k in key_positions(cache)]


def run_demo(model_dir: Path, predictors: Path | None, device: str, batch: int, context: int | None,
             new_tokens: int, repeats: int, seed: int = 0) -> dict:
    from .hf import sdtp_config, sdtp_disabled
    from .measure import layer_tokens

    model = _load(model_dir, predictors, device)
    ids, answers = _prompts(model_dir, batch, context, model.config.vocab_size, seed)
    ids = ids.to(device)
    clock = CLOCKS["wall"]

    def prefill():
        model(ids, use_cache=True, logits_to_keep=1)

    def generate():
        return model.generate(ids, max_new_tokens=new_tokens, do_sample=False)[:, ids.shape[1]:]

    config, layers = sdtp_config(model), model.config.num_hidden_layers
    tokens = layer_tokens(config, layers, ids.shape[1])
    width, stages = config.predictor_width(model.config.hidden_size), config.stage_layers(layers)
    result = {"model": str(model_dir), "device": device, "batch": batch, "context": ids.shape[1],
              "new_tokens": new_tokens, "sdtp": config.to_dict(), "layer_tokens": tokens}
    with torch.no_grad():
        prefill()  # warm-up
        for name, pruning in (("dense", False), ("sdtp", True)):
            with contextlib.nullcontext() if pruning else sdtp_disabled(model):
                times = [measure(prefill, device, clock) for _ in range(repeats)]
                e2e_s, mem = measure(generate, device, clock)
                out = generate()
            prefill_s, prefill_mem = min(times)
            per_row = flops(model.config, tokens if pruning else [ids.shape[1]] * layers, new_tokens,
                            (width, stages) if pruning else (0, []))
            result[name] = {
                "prefill_s": prefill_s, "e2e_s": e2e_s, "peak_mem_prefill": prefill_mem, "peak_mem_e2e": mem,
                "flops_prefill": batch * per_row[0], "flops_e2e": batch * per_row[1], 
                "kept_per_stage": _kept_per_stage(model, ids) if pruning else [float(ids.shape[1])] * len(stages),
                "correct": None if answers is None else (out[:, 0].cpu() == answers).float().mean().item(),
            }
    return result


def _table(r: dict) -> str:
    d, s = r["dense"], r["sdtp"]
    mib = 2**20

    def row(label, dense, sdtp, fmt, ratio=True):
        extra = f"{dense / sdtp:6.2f}x" if ratio and sdtp else ""
        return f"| {label:<28} | {fmt(dense):>12} | {fmt(sdtp):>12} | {extra:>7} |"

    kept = " / ".join(f"{k:.0f}" for k in s["kept_per_stage"])
    lines = [
        f"model {r['model']}  device {r['device']}  batch {r['batch']} x {r['context']} tokens, "
        f"{r['new_tokens']} new tokens; tokens kept per stage (mean per row): {kept}",
        f"| {'':<28} | {'dense':>12} | {'SDTP':>12} | {'gain':>7} |",
        f"|{'-' * 30}|{'-' * 14}|{'-' * 14}|{'-' * 9}|",
        row("prefill latency (s)", d["prefill_s"], s["prefill_s"], lambda v: f"{v:.4f}"),
        row(f"prefill + {r['new_tokens']} tokens (s)", d["e2e_s"], s["e2e_s"], lambda v: f"{v:.4f}"),
        row("prefill FLOPs (G)", d["flops_prefill"], s["flops_prefill"], lambda v: f"{v / 1e9:.2f}"),
        row("end-to-end FLOPs (G)", d["flops_e2e"], s["flops_e2e"], lambda v: f"{v / 1e9:.2f}"),
        row("peak memory, prefill (MiB)", d["peak_mem_prefill"], s["peak_mem_prefill"], lambda v: f"{v / mib:.1f}"),
    ]
    if d["correct"] is not None:
        lines.append(row("answers correct", d["correct"], s["correct"], lambda v: f"{100 * v:.1f}%", ratio=False))
    return "\n".join(lines)


def _plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    layers = range(len(r["layer_tokens"]))
    left.step(layers, [r["context"]] * len(layers), where="mid", label="dense")
    left.step(layers, r["layer_tokens"], where="mid", label="SDTP")
    left.set(xlabel="decoder layer", ylabel="tokens per row", title="sequence length through the model", ylim=(0, None))
    left.legend()
    metrics = [("prefill\nlatency", "prefill_s"), ("end-to-end\nlatency", "e2e_s"), ("prefill\nFLOPs", "flops_prefill"),
               ("end-to-end\nFLOPs", "flops_e2e")]
    x = range(len(metrics))
    right.bar([i - 0.2 for i in x], [1.0] * len(metrics), 0.4, label="dense")
    right.bar([i + 0.2 for i in x], [r["sdtp"][k] / r["dense"][k] for _, k in metrics], 0.4, label="SDTP")
    right.set_xticks(list(x), [m for m, _ in metrics])
    right.set(ylabel="relative to dense", title="cost (lower is better)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from .models import reference_model

    model_dir = Path(args.model) if args.model else reference_model()
    result = run_demo(model_dir, Path(args.predictors) if args.predictors else None, args.device,
                      args.batch, args.context, args.new_tokens, args.repeats)
    print(_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    _plot(result, args.plot)
    print(f"plot: {args.plot}")
    return 0


def add_commands(commands) -> None:
    demo = commands.add_parser("demo", help="dense vs SDTP on a batch of long prompts: table and plot",
                               description=__doc__)
    demo.add_argument("--model", help="local model directory (default: the reference model installed with the "
                      "package)")
    demo.add_argument("--predictors", help="directory written by save_sdtp (default: MODEL/sdtp)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--batch", type=int, default=32,
                      help="prompts per batch (large enough that compute, not per-call overhead, dominates)")
    demo.add_argument("--context", type=int, help="prompt length (default: the task's, or 4096 for random prompts)")
    demo.add_argument("--new-tokens", type=int, default=16)
    demo.add_argument("--repeats", type=int, default=3, help="prefill timings; the best is reported")
    demo.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    demo.add_argument("--plot", default="sdtp_demo.png", help="PNG written here")
    demo.add_argument("--json", help="also write the figures as JSON here")
    demo.set_defaults(run=_run)
