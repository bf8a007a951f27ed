"""`sdtp demo`: a batch of long prompts through one model with and without SDTP, side by side — tokens kept per
stage, prefill and end-to-end latency (median and spread of repeated timings), analytic FLOPs, peak memory,
answers — as a table, and as a JSON file and a PNG plot in an output folder.

By default it runs the reference model that installs with the package (a small Llama trained on a synthetic
key-value retrieval task, `sdtp_kernels.models.reference_model()`) with its trained predictors (its sdtp/);
--model/--predictors take any local checkpoint of a supported model instead (random prompts then, since no task
describes their answers)."""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch

from .arguments import HelpFormatter, device_name, positive_int
from .files import check_output_folder
from .measure import CLOCKS, flops, highest_peak, interleaved


def _say(message: str) -> None:
    print(f"sdtp demo: {message}", file=sys.stderr, flush=True)


def _trained_length(model_dir: Path) -> int | None:
    """The prompt length the model's task trained it on, where its task.json says."""
    task_file = model_dir / "task.json"
    if not task_file.exists():
        return None
    return json.loads(task_file.read_text()).get("task", {}).get("seq_len")


def check_context(model_dir: Path, context: int, max_positions: int | None) -> None:
    """Refuse a prompt longer than the model's positions; warn past the length its task trained it on."""
    if max_positions is not None and context > max_positions:
        raise ValueError(f"--context {context} exceeds the {max_positions} positions of {model_dir} "
                         "(max_position_embeddings; random prompts default to 4096 tokens: pass a shorter --context)")
    trained = _trained_length(model_dir)
    if trained is not None and context > trained:
        warnings.warn(f"--context {context}: {model_dir} was trained on {trained}-token prompts of its task; at "
                      f"{context} tokens its answers (dense and SDTP alike) say nothing about pruning", stacklevel=2)


def _prompts(model_dir: Path, batch: int, context: int | None, vocab_size: int, seed: int):
    """(input_ids [B, N], answers or None). Held-out task prompts when the model directory describes its task."""
    task_file = model_dir / "task.json"
    if task_file.exists():
        from .eval.prompts import task_prompts

        try:
            prompts = task_prompts(str(task_file), batch, seq_len=context)
        except ValueError as error:  # a length the task cannot fill
            raise ValueError(f"--context {context}: {error}") from None
        return torch.tensor([p.input_ids for p in prompts]), torch.tensor([p.answer for p in prompts])
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (batch, context or 4096), generator=generator), None


def _load(model_dir: Path, predictors: Path | None, device: str):
    from .hf import apply_sdtp
    from .hf.model_dir import load_causal_lm, local_model_dir
    from .predictor_file import read_predictors

    local_model_dir(model_dir)
    predictors = predictors or model_dir / "sdtp"
    if not predictors.is_dir():
        raise FileNotFoundError(f"no trained predictors at {predictors} (pass --predictors DIR, written by "
                                "`sdtp train` or save_sdtp)")
    saved = read_predictors(predictors)
    model = load_causal_lm(model_dir).to(device).eval()
    model.generation_config.eos_token_id = None  # generate exactly the requested number of tokens
    model.generation_config.pad_token_id = 0
    return apply_sdtp(model, saved.directory)


def _kept_per_stage(model, ids: torch.Tensor) -> list[float]:
    """Mean tokens per row that each stage's layers hold after a prefill, read off the pruned KV cache."""
    from .hf import key_positions
    from .hf.model_call import output_cache

    cache = output_cache(model(ids, use_cache=True, logits_to_keep=1))
    return [float(ids.shape[1]) if k is None else (k >= 0).sum(1).float().mean().item() for k in key_positions(cache)]


def _timings(runs: list[tuple[float, int]]) -> dict:
    """Median, min and max of repeated (time, peak memory) calls, and the highest peak."""
    seconds = [s for s, _ in runs]
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "all_s": seconds, "peak_mem": highest_peak(runs)}


def run_demo(model_dir: Path, predictors: Path | None, device: str, batch: int, context: int | None,
             new_tokens: int, repeats: int, seed: int = 0) -> dict:
    from .hf import sdtp_config, sdtp_disabled
    from .measure import layer_tokens

    _say(f"loading {model_dir}")
    model = _load(model_dir, predictors, device)
    ids, answers = _prompts(model_dir, batch, context, model.config.vocab_size, seed)
    check_context(model_dir, ids.shape[1], getattr(model.config, "max_position_embeddings", None))
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
              "new_tokens": new_tokens, "repeats": repeats, "sdtp": config.to_dict(), "layer_tokens": tokens}
    def mode(pruning: bool):
        return contextlib.nullcontext() if pruning else sdtp_disabled(model)

    with torch.no_grad():
        _say("warm-up: a prefill and a generation, dense and pruned")
        for pruning in (False, True):  # both: the first timed calls would otherwise pay one-time costs for one side
            with mode(pruning):
                prefill()
                generate()
        modes = {"dense": lambda: mode(False), "sdtp": lambda: mode(True)}
        _say(f"{repeats} prefills of {batch} x {ids.shape[1]} tokens each, dense and SDTP taking turns")
        prefills = interleaved(modes, prefill, device, repeats, clock)
        _say(f"{repeats} x prefill + {new_tokens} tokens each, dense and SDTP taking turns")
        generates = interleaved(modes, generate, device, repeats, clock)
        for name, pruning in (("dense", False), ("sdtp", True)):
            prefill_t, e2e_t = _timings(prefills[name]), _timings(generates[name])
            with mode(pruning):
                out = generate()
            per_row = flops(model.config, tokens if pruning else [ids.shape[1]] * layers, new_tokens,
                            (width, stages) if pruning else (0, []))
            prefill_flops, e2e_flops = (None, None) if per_row is None else (batch * per_row[0], batch * per_row[1])
            result[name] = {
                "prefill_s": prefill_t["median_s"], "prefill_timings": prefill_t,
                "e2e_s": e2e_t["median_s"], "e2e_timings": e2e_t,
                "peak_mem_prefill": prefill_t["peak_mem"], "peak_mem_e2e": e2e_t["peak_mem"],
                "flops_prefill": prefill_flops, "flops_e2e": e2e_flops,  # None: a structure flops() does not model
                "kept_per_stage": _kept_per_stage(model, ids) if pruning else [float(ids.shape[1])] * len(stages),
                "correct": None if answers is None else (out[:, 0].cpu() == answers).float().mean().item(),
            }
    return result


def _table(r: dict) -> str:
    d, s = r["dense"], r["sdtp"]
    mib = 2**20

    def row(label, dense, sdtp, fmt, ratio=True):
        if dense is None:  # FLOPs of a structure the formula does not model
            return f"| {label:<28} | {'n/a':>21} | {'n/a':>21} | {'':>7} |"
        extra = f"{dense / sdtp:6.2f}x" if ratio and sdtp else ""
        return f"| {label:<28} | {fmt(dense):>21} | {fmt(sdtp):>21} | {extra:>7} |"

    def timed(label, key):  # median (min-max) of the repeated timings; the gain of the medians
        def fmt(t):
            return f"{t['median_s']:.4f} ({t['min_s']:.3f}-{t['max_s']:.3f})"

        gain = d[key]["median_s"] / s[key]["median_s"]
        return f"| {label:<28} | {fmt(d[key]):>21} | {fmt(s[key]):>21} | {gain:6.2f}x |"

    kept = " / ".join(f"{k:.0f}" for k in s["kept_per_stage"])
    lines = [
        f"model {r['model']}  device {r['device']}  batch {r['batch']} x {r['context']} tokens, "
        f"{r['new_tokens']} new tokens; tokens kept per stage (mean per row): {kept}; timings: median (min-max) of "
        f"{r['repeats']}",
        f"| {'':<28} | {'dense':>21} | {'SDTP':>21} | {'gain':>7} |",
        f"|{'-' * 30}|{'-' * 23}|{'-' * 23}|{'-' * 9}|",
        timed("prefill latency (s)", "prefill_timings"),
        timed(f"prefill + {r['new_tokens']} tokens (s)", "e2e_timings"),
        row("prefill FLOPs (G)", d["flops_prefill"], s["flops_prefill"], lambda v: f"{v / 1e9:.2f}"),
        row("end-to-end FLOPs (G)", d["flops_e2e"], s["flops_e2e"], lambda v: f"{v / 1e9:.2f}"),
        row("peak memory, prefill (MiB)", d["peak_mem_prefill"], s["peak_mem_prefill"], lambda v: f"{v / mib:.1f}"),
    ]
    if d["correct"] is not None:
        lines.append(row("answers correct", d["correct"], s["correct"], lambda v: f"{100 * v:.1f}%", ratio=False))
    return "\n".join(lines)


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    layers = range(len(r["layer_tokens"]))
    left.step(layers, [r["context"]] * len(layers), where="mid", label="dense")
    left.step(layers, r["layer_tokens"], where="mid", label="SDTP")
    left.set(xlabel="decoder layer", ylabel="tokens per row", title="sequence length through the model", ylim=(0, None))
    left.legend()
    metrics = [("prefill\nlatency", "prefill_s"), ("end-to-end\nlatency", "e2e_s")]
    if r["dense"]["flops_prefill"] is not None:
        metrics += [("prefill\nFLOPs", "flops_prefill"), ("end-to-end\nFLOPs", "flops_e2e")]
    x = range(len(metrics))
    right.bar([i - 0.2 for i in x], [1.0] * len(metrics), 0.4, label="dense")
    right.bar([i + 0.2 for i in x], [r["sdtp"][k] / r["dense"][k] for _, k in metrics], 0.4, label="SDTP")
    for i, key in ((0, "prefill_timings"), (1, "e2e_timings")):  # the spread of the repeated timings
        d, s = r["dense"][key], r["sdtp"][key]
        low, high = (s["median_s"] - s["min_s"]) / d["median_s"], (s["max_s"] - s["median_s"]) / d["median_s"]
        right.errorbar(i + 0.2, s["median_s"] / d["median_s"], yerr=[[low], [high]], fmt="none", ecolor="k", capsize=3)
    right.set_xticks(list(x), [m for m, _ in metrics])
    right.set(ylabel="relative to dense (median)", title="cost (lower is better)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    from .models import reference_model

    check_output_folder(args.out)  # before the model loads, not after the run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else reference_model()
    result = run_demo(model_dir, Path(args.predictors) if args.predictors else None, args.device,
                      args.batch, args.context, args.new_tokens, args.repeats)
    print(_table(result))
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out / "demo.png")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    return 0


def add_commands(commands) -> None:
    demo = commands.add_parser("demo", help="dense vs SDTP on a batch of long prompts: table, JSON and plot",
                               description=__doc__, formatter_class=HelpFormatter)
    demo.add_argument("--model", help="local model directory (default: the reference model installed with the "
                      "package)")
    demo.add_argument("--predictors", help="directory written by save_sdtp (default: MODEL/sdtp)")
    demo.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu",
                      help="cpu or cuda")
    demo.add_argument("--batch", type=positive_int, default=32,
                      help="prompts per batch (large enough that compute, not per-call overhead, dominates)")
    demo.add_argument("--context", type=positive_int,
                      help="prompt length (default: the task's, or 4096 for random prompts)")
    demo.add_argument("--new-tokens", type=positive_int, default=16, help="tokens generated after the prefill")
    demo.add_argument("--repeats", type=positive_int, default=3, help="timings of each measurement")
    demo.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    demo.add_argument("--out", default="sdtp-demo", help="folder for demo.json and demo.png")
    demo.set_defaults(run=_run)
