"""End-to-end benchmark, dense vs SDTP: prefill latency, latency of prefill + N new tokens, analytic FLOPs, peak
memory and the share of the pruned prefill spent in SDTP's own work (score + select + compact + masks).

    python bench/e2e.py                                    # CPU: 16-layer hidden-512 Llama, 4096-token prompt
    python bench/e2e.py --device cuda                      # GPU: Llama-2-7B shape, bf16, 4K..128K
    python bench/e2e.py --contexts 1024 2048 4096 8192 --out bench/results/e2e-cpu.json --plot bench/results/e2e-cpu.png

Models have random weights and random predictors: latency, FLOPs and memory depend on how many tokens are kept,
not on which. Dense runs are the same model with pruning switched off (sdtp_disabled).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import sys
import time
from typing import Optional

import torch
import transformers
from torch.autograd import DeviceType
from transformers import LlamaConfig, LlamaForCausalLM

from sdtp_kernels.arguments import positive_int
from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.files import utc_timestamp
from sdtp_kernels.hf import apply_sdtp, sdtp_disabled
from sdtp_kernels.hf.attention_backends import AVOID_CUDNN_ENV
from sdtp_kernels.measure import (CLOCKS, FLOPS_METHOD, environment_variable, flops, highest_peak, interleaved,
                                  layer_tokens, measure, peak_mem_method, profiling, provenance)

PRESETS = {
    "cpu": dict(
        model=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=16, num_attention_heads=8,
                   num_key_value_heads=8, vocab_size=32000, max_position_embeddings=16384),
        dtype=torch.float32, contexts=[4096], new_tokens=128,
    ),
    "llama2-7b": dict(
        model=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32, vocab_size=32000, max_position_embeddings=131072 + 256),
        dtype=torch.bfloat16, contexts=[4096, 16384, 32768, 131072], new_tokens=128,
    ),
}


def build_model(preset: dict, device: str) -> LlamaForCausalLM:
    config = LlamaConfig(**preset["model"])
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=preset["dtype"]).eval()
    model.generation_config.eos_token_id = None  # always generate the requested number of tokens
    model.generation_config.pad_token_id = 0
    return model


class FreshLengths:
    """Prompt lengths that no forward of this run has used, as a server meets its prompts: what is built per shape
    (cuDNN attention's graphs, one per pruned token set in SDTP) is paid in the call that meets it. Each length
    reserves the key lengths its calls meet, [length, length + span] (span: the decode steps of a generate), apart
    from every other's, so that no call reuses what an earlier one built; the lengths lie just below a context, or
    just above it where there is no room below."""

    def __init__(self):
        self.taken: list[tuple[int, int]] = []

    def reserve(self, length: int, span: int) -> int:
        self.taken.append((length, length + span))
        return length

    def near(self, context: int, span: int) -> int:
        def free(length: int) -> bool:
            return not any(lo <= length + span and length <= hi for lo, hi in self.taken)

        length = next((n for n in range(context - 1, 0, -1) if free(n)), None)
        if length is None:
            length = next(n for n in itertools.count(context + 1) if free(n))
        return self.reserve(length, span)


def say(message: str) -> None:
    print(f"e2e: {message}", file=sys.stderr, flush=True)


def random_ids(length: int, vocab_size: int, device: str) -> torch.Tensor:
    """[1, length] token ids, the same for the same length."""
    generator = torch.Generator().manual_seed(length)
    return torch.randint(1, vocab_size, (1, length), generator=generator).to(device)


def dense_and_sdtp(model, fn, device: str, repeats: int, clock) -> tuple[list, list]:
    """(time, peak memory) of `repeats` calls of fn without and with pruning, in call order, interleaved."""
    runs = interleaved({"dense": lambda: sdtp_disabled(model), "sdtp": contextlib.nullcontext}, fn, device, repeats,
                       clock)
    return runs["dense"], runs["sdtp"]


def device_allocations(device: str) -> int:
    """Device memory segments the CUDA caching allocator has obtained so far (cudaMalloc calls); 0 on the CPU."""
    return torch.cuda.memory_stats().get("segment.all.allocated", 0) if device == "cuda" else 0


def prune_overhead(prefill, device: str) -> tuple[float, Optional[float], float]:
    """(seconds, span seconds, the prefill's wall seconds) one pruned prefill spends in SDTP's "sdtp.prune" ranges
    (score, select, compact, masks), and how long that profiled prefill took, a share's denominator on the same clock
    and under the same profiler. On the CPU: the ranges' wall time, and no span. On CUDA: the device time of the
    kernels launched inside the ranges, and the ranges' span on the GPU, which adds the gaps between those kernels.
    The profiler lists the two as rows of the same name (device types CPU and CUDA); summed, they would count the
    same work twice."""
    with profiling(device) as profile:
        start = time.perf_counter()
        prefill()
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    rows = [e for e in profile.key_averages() if e.key == "sdtp.prune"]
    on_cpu = [e for e in rows if e.device_type == DeviceType.CPU]
    if device != "cuda":
        return sum(e.cpu_time_total for e in on_cpu) / 1e6, None, wall
    span = sum(e.device_time_total for e in rows if e.device_type == DeviceType.CUDA) / 1e6
    return sum(e.device_time_total for e in on_cpu) / 1e6, span, wall


# The operators that run attention in torch's SDPA, one per backend (cuDNN, FlashAttention, memory-efficient, math,
# the CPU's flash): their call counts show which backend each profiled variant ran.
SDPA_BACKEND_PREFIX = "aten::_scaled_dot_product_"


def first_generate_profile(model, fresh: FreshLengths, context: int, new_tokens: int, device: str,
                           top: int = 15) -> dict:
    """Where a first generate's time goes: dense, SDTP, and SDTP with torch's own SDPA order in its pruned layers
    (SDTP_AVOID_CUDNN_SDPA=never), each one generate at its own fresh prompt length near `context`, profiled; its
    wall time under the profiler, the calls of each SDPA backend's operator, and the operators and CUDA runtime calls
    that took the most host time (cuDNN attention builds a graph per new shape inside
    aten::_scaled_dot_product_cudnn_attention)."""
    result = {}
    for name, avoid_cudnn in (("dense", None), ("sdtp", "decode"), ("sdtp_cudnn_sdpa", "never")):
        length = fresh.near(context, new_tokens)
        ids = random_ids(length, model.config.vocab_size, device)
        disabled = sdtp_disabled(model) if name == "dense" else contextlib.nullcontext()
        with environment_variable(AVOID_CUDNN_ENV, avoid_cudnn), disabled, torch.no_grad(), profiling(device) as p:
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        events = p.key_averages()
        top_events = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
        result[name] = {
            "prompt_tokens": length, "wall_s_profiled": seconds,
            "sdpa_calls": {e.key: e.count for e in events if e.key.startswith(SDPA_BACKEND_PREFIX)},
            "top_self_cpu": [{"name": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
                              "cpu_total_s": e.cpu_time_total / 1e6} for e in top_events]}
    return result


def run_context(model, sdtp: SDTPConfig, fresh: FreshLengths, context: int, new_tokens: int, device: str,
                repeats: int, clock) -> dict:
    config = model.config
    ids = random_ids(context, config.vocab_size, device)

    def prefill():
        model(ids, use_cache=True, logits_to_keep=1)  # as generate() calls it

    # The prompts of the prefills at a new length, one per call (dense and SDTP alternate), made before any is timed.
    # Span 2: consecutive lengths can share a deep stage's kept count.
    new_lengths = [fresh.near(context, 2) for _ in range(2 * repeats)]
    new_prompts = iter([random_ids(length, config.vocab_size, device) for length in new_lengths])

    def prefill_new_length():
        model(next(new_prompts), use_cache=True, logits_to_keep=1)

    allocations = []  # cudaMalloc calls of each generate, in call order

    def generate(length: int):
        prompt = ids if length == context else random_ids(length, config.vocab_size, device)  # made outside the timing

        def call():
            before = device_allocations(device)
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            allocations.append(device_allocations(device) - before)
        return call

    with torch.no_grad():
        say(f"{context} tokens: {repeats} prefills each, dense and SDTP, then as many at new prompt lengths")
        dense_runs, sdtp_runs = dense_and_sdtp(model, prefill, device, repeats, clock)
        dense_prefill, sdtp_prefill = min(dense_runs)[0], min(sdtp_runs)[0]
        dense_prefill_mem, sdtp_prefill_mem = highest_peak(dense_runs), highest_peak(sdtp_runs)
        dense_runs, sdtp_runs = dense_and_sdtp(model, prefill_new_length, device, repeats, clock)
        # Scaled to the context: the lengths fall call by call and dense, first in each round, gets the longer.
        dense_prefill_new, sdtp_prefill_new = (min(t * context / n for (t, _), n in zip(runs, new_lengths[side::2]))
                                               for side, runs in enumerate((dense_runs, sdtp_runs)))
        # A first generate at a new prompt length pays one-time costs (on an H200 SDTP's took ~9 s at 4K and at 16K
        # tokens where dense took 2.5 and 1.8 s, before its decoding avoided cuDNN attention, docs/ARCHITECTURE.md
        # §4.6; not seen on the CPU): dense and SDTP each at a fresh length of its own, so that neither reuses what
        # the other built, then again at that length: the difference is the first call's extra cost, whatever the
        # two lengths. The steady state is the second of two generates at the context; a first generate at the context
        # is that plus the first call's extra cost (the fresh lengths differ, so their raw times are not compared).
        # The caching allocator's cudaMalloc calls per generate are recorded to test another explanation: pruned
        # layers hold caches of other sizes than dense ones, which it may have to allocate afresh.
        say(f"{context} tokens: generates of {new_tokens} tokens, each side twice at a fresh length, then twice at "
            "the context")
        first_lengths = {"dense": fresh.near(context, new_tokens), "sdtp": fresh.near(context, new_tokens)}
        with sdtp_disabled(model):
            dense_first = [measure(generate(first_lengths["dense"]), device, clock)[0] for _ in range(2)]
        sdtp_first = [measure(generate(first_lengths["sdtp"]), device, clock)[0] for _ in range(2)]
        dense_runs, sdtp_runs = dense_and_sdtp(model, generate(context), device, 2, clock)
        (dense_e2e, _), (sdtp_e2e, _) = dense_runs[1], sdtp_runs[1]
        dense_mem, sdtp_mem = highest_peak(dense_runs), highest_peak(sdtp_runs)
        say(f"{context} tokens: the pruning overhead, one profiled prefill")
        overhead, overhead_span, profiled_prefill = prune_overhead(prefill, device)

    dense_extra, sdtp_extra = dense_first[0] - dense_first[1], sdtp_first[0] - sdtp_first[1]
    layers = config.num_hidden_layers
    kept = layer_tokens(sdtp, layers, context)
    stage_layers = sdtp.stage_layers(layers)
    flops_dense, flops_e2e_dense = flops(config, [context] * layers, new_tokens)
    predictor = (sdtp.predictor_width(config.hidden_size), stage_layers)
    flops_sdtp, flops_e2e_sdtp = flops(config, kept, new_tokens, predictor)
    return {
        "context": context,
        "dense_prefill_s": dense_prefill,
        "sdtp_prefill_s": sdtp_prefill,
        "overhead_s": overhead,
        "overhead_span_s": overhead_span,
        "overhead_profiled_prefill_s": profiled_prefill,
        "flops_dense": flops_dense,
        "flops_sdtp": flops_sdtp,
        "peak_mem_dense": dense_mem,
        "peak_mem_sdtp": sdtp_mem,
        "prefill_speedup": dense_prefill / sdtp_prefill,
        "dense_prefill_new_length_s": dense_prefill_new,
        "sdtp_prefill_new_length_s": sdtp_prefill_new,
        "prefill_speedup_new_length": dense_prefill_new / sdtp_prefill_new,
        "new_length_prompt_tokens": new_lengths,
        "flops_ratio": flops_dense / flops_sdtp,
        "overhead_share": overhead / profiled_prefill,  # both wall time of one profiled prefill, whatever --clock
        "new_tokens": new_tokens,
        "dense_e2e_s": dense_e2e,
        "sdtp_e2e_s": sdtp_e2e,
        "e2e_speedup": dense_e2e / sdtp_e2e,
        "dense_e2e_first_s": dense_first[0],
        "sdtp_e2e_first_s": sdtp_first[0],
        "e2e_speedup_first": (dense_e2e + dense_extra) / (sdtp_e2e + sdtp_extra),
        "e2e_first_prompt_tokens": first_lengths,
        "dense_first_call_extra_s": dense_extra,
        "sdtp_first_call_extra_s": sdtp_extra,
        "device_allocations_e2e": dict(zip(("dense_first", "dense_first_again", "sdtp_first", "sdtp_first_again",
                                            "dense_warm_up", "sdtp_warm_up", "dense", "sdtp"), allocations)),
        "flops_e2e_dense": flops_e2e_dense,
        "flops_e2e_sdtp": flops_e2e_sdtp,
        "peak_mem_prefill_dense": dense_prefill_mem,
        "peak_mem_prefill_sdtp": sdtp_prefill_mem,
        "kept_per_stage": [kept[layer] for layer in stage_layers],
    }


def machine(device: str) -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def plot(rows: list[dict], path: str, title: str) -> None:
    contexts = [r["context"] for r in rows]
    plot_speedups(path, contexts, [
        ([r["prefill_speedup"] for r in rows], "o-", "prefill speed-up (measured)"),
        ([r["prefill_speedup_new_length"] for r in rows], "^:", "prefill speed-up, each at a new prompt length"),
        ([r["e2e_speedup"] for r in rows], "s-", f"end-to-end speed-up ({rows[0]['new_tokens']} new tokens)"),
        ([r["flops_ratio"] for r in rows], "k--", "prefill FLOPs ratio (ideal)"),
    ], title, "dense time / SDTP time")


def plot_speedups(path: str, contexts: list[int], lines: list[tuple[list[float], str, str]], title: str,
                  ylabel: str) -> None:
    """A PNG of speed-ups against context (log2 axis): one (values, matplotlib format, label) per line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for values, fmt, label in lines:
        ax.plot(contexts, values, fmt, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [f"{c // 1024}K" if c >= 1024 else str(c) for c in contexts])
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: cpu on CPU, llama2-7b on CUDA")
    parser.add_argument("--contexts", type=positive_int, nargs="+", help="prompt lengths (default: the preset's)")
    parser.add_argument("--new-tokens", type=positive_int, help="tokens generated end to end (default: the preset's)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="prefill timings per setting; the best is kept")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="what the times measure (see CLOCKS)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--plot", help="write a PNG plot of speed-up vs context here")
    parser.add_argument("--profile-first", action="store_true",
                        help="also profile a first generate, dense and SDTP, each at a fresh length near the first "
                             "context")
    args = parser.parse_args()
    if args.clock == "cpu" and args.device == "cuda":
        parser.error("--clock cpu measures the process's CPU time, not the GPU's work: use --clock wall on cuda")
    for path in (args.out, args.plot):  # a missing folder found now, not after the first context
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            parser.error(f"the folder of {path} does not exist")

    if args.threads:
        torch.set_num_threads(args.threads)
    preset_name = args.preset or ("llama2-7b" if args.device == "cuda" else "cpu")
    preset = PRESETS[preset_name]
    contexts = args.contexts or preset["contexts"]
    new_tokens = args.new_tokens if args.new_tokens is not None else preset["new_tokens"]
    sdtp = SDTPConfig()
    torch.manual_seed(0)
    model = apply_sdtp(build_model(preset, args.device), sdtp)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection
        model(torch.ones(1, 64, dtype=torch.long, device=args.device), use_cache=True, logits_to_keep=1)

    rows = []
    result = {
        "rows": rows,
        "machine": machine(args.device),
        "provenance": provenance(),
        "date": utc_timestamp(),
        "device": args.device,
        "preset": preset_name,
        "model": {**preset["model"], "dtype": str(preset["dtype"]), "attn_implementation": "sdpa"},
        "sdtp": sdtp.to_dict(),
        "timing": f"best of {args.repeats} prefills, dense and SDTP interleaved (*_new_length: each at its own prompt "
                  "length not run before, its time scaled by context / length); end-to-end: the second of two "
                  "generates at the context each; *_first: one generate each at its own fresh prompt length "
                  "(e2e_first_prompt_tokens), with one-time costs; *_first_call_extra_s: that first generate minus a "
                  "second one at the same length; e2e_speedup_first: of the end-to-end times plus each side's "
                  "first-call extra (one length); peak memory: the highest over the timed calls",
        "clock": args.clock,
        "peak_mem_method": peak_mem_method(args.device),
        "flops_method": FLOPS_METHOD,
        "finished": False,
    }

    def save():  # after every context: a run cut short keeps what it measured
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)

    fresh = FreshLengths()
    for context in contexts:  # the contexts' own key lengths are never taken as fresh ones
        fresh.reserve(context, new_tokens)
    for context in contexts:
        row = run_context(model, sdtp, fresh, context, new_tokens, args.device, args.repeats, CLOCKS[args.clock])
        rows.append(row)
        save()
        print(
            f"{context:>7} tokens  prefill dense {row['dense_prefill_s']:.3f}s sdtp {row['sdtp_prefill_s']:.3f}s "
            f"({row['prefill_speedup']:.2f}x, at a new length {row['prefill_speedup_new_length']:.2f}x, "
            f"FLOPs {row['flops_ratio']:.2f}x)  overhead {row['overhead_s']:.3f}s "
            f"({100 * row['overhead_share']:.1f}%)  e2e {row['e2e_speedup']:.2f}x "
            f"(first {row['e2e_speedup_first']:.2f}x; first-call extra dense {row['dense_first_call_extra_s']:.2f}s "
            f"sdtp {row['sdtp_first_call_extra_s']:.2f}s)  "
            f"peak mem {row['peak_mem_dense'] / 2**20:.0f} -> {row['peak_mem_sdtp'] / 2**20:.0f} MiB",
            flush=True,
        )
    if args.profile_first:
        result["first_generate_profile"] = first_generate_profile(model, fresh, contexts[0], new_tokens, args.device)
    result["finished"] = True
    save()
    if args.plot:
        plot(rows, args.plot, f"SDTP vs dense: {preset_name} preset on {args.device}")


if __name__ == "__main__":
    main()
