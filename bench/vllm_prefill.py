"""Time to first token and prefill throughput inside vLLM, dense vs SDTP (docs/ARCHITECTURE.md §7): the CPU preset
of bench/e2e.py (16 layers, hidden 512, random weights, fp32) saved once, served as it is (dense) and as its
`sdtp export` with random predictors and the default schedule (SDTP). One engine each, eager both (SDTP runs
eagerly), one prompt at a time; TTFT is the best wall time of `generate(max_tokens=1)` over --repeats.

Run in vLLM's environment (scripts/setup_vllm.sh), from outside the source tree:
    cd build && VLLM_CPU_KVCACHE_SPACE=2 vllm-venv/bin/python ../bench/vllm_prefill.py \\
        --out ../bench/results/vllm-cpu.json --plot ../bench/results/vllm-cpu.png
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import torch
from transformers import LlamaConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import PRESETS, build_model, plot_speedups  # noqa: E402  (the transformers benchmark's preset, model, plot)

from sdtp_kernels.config import SDTPConfig  # noqa: E402
from sdtp_kernels.files import utc_timestamp  # noqa: E402
from sdtp_kernels.hf import apply_sdtp, save_sdtp  # noqa: E402
from sdtp_kernels.measure import FLOPS_METHOD, flops, layer_tokens  # noqa: E402


def write_models(root: pathlib.Path, sdtp: SDTPConfig) -> tuple[str, str]:
    from sdtp_kernels.vllm.export import export

    preset = PRESETS["cpu"]
    torch.manual_seed(0)
    model = build_model(preset, "cpu")
    model.save_pretrained(root / "dense")
    save_sdtp(apply_sdtp(model, sdtp), root / "predictors")
    return str(root / "dense"), export(str(root / "dense"), str(root / "predictors"), str(root / "sdtp"))


def ttft(folder: str, contexts: list[int], repeats: int) -> list[float]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, dtype="float32", enforce_eager=True, skip_tokenizer_init=True,
              enable_prefix_caching=False, enable_chunked_prefill=False, max_model_len=max(contexts) + 8,
              max_num_batched_tokens=max(contexts) + 8, seed=0)
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    best = []
    for context in contexts:
        prompt = {"prompt_token_ids": torch.randint(3, 32000, (context,), generator=g).tolist()}
        llm.generate(prompt, params, use_tqdm=False)  # warm-up at this length
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            llm.generate(prompt, params, use_tqdm=False)
            times.append(time.perf_counter() - start)
        best.append(min(times))
    del llm
    gc.collect()
    return best


def plot(rows: list[dict], path: str) -> None:
    plot_speedups(path, [r["context"] for r in rows], [
        ([r["ttft_speedup"] for r in rows], "o-", "TTFT speed-up in vLLM (measured)"),
        ([r["flops_ratio"] for r in rows], "k--", "prefill FLOPs ratio (ideal)"),
    ], "SDTP vs dense in vLLM (CPU build): cpu preset", "dense TTFT / SDTP TTFT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", help="where the two model folders are written (default: a temporary folder, "
                                           "removed afterwards); must not hold them already")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--plot", help="write a PNG plot of speed-up vs context here")
    args = parser.parse_args()

    sdtp = SDTPConfig()
    with tempfile.TemporaryDirectory(prefix="sdtp-vllm-bench-") as scratch:
        root = pathlib.Path(args.work_dir or scratch)
        root.mkdir(parents=True, exist_ok=True)
        dense_dir, sdtp_dir = write_models(root, sdtp)
        dense, pruned = ttft(dense_dir, args.contexts, args.repeats), ttft(sdtp_dir, args.contexts, args.repeats)
    config = LlamaConfig(**PRESETS["cpu"]["model"])
    width = sdtp.predictor_width(config.hidden_size)
    stages = sdtp.stage_layers(config.num_hidden_layers)
    rows = []
    for context, dense_s, sdtp_s in zip(args.contexts, dense, pruned):
        flops_dense = flops(config, [context] * config.num_hidden_layers, 1)[0]
        flops_sdtp = flops(config, layer_tokens(sdtp, config.num_hidden_layers, context), 1, (width, stages))[0]
        rows.append({"context": context, "dense_ttft_s": dense_s, "sdtp_ttft_s": sdtp_s,
                     "dense_prefill_tok_per_s": context / dense_s, "sdtp_prefill_tok_per_s": context / sdtp_s,
                     "flops_dense": flops_dense, "flops_sdtp": flops_sdtp, "ttft_speedup": dense_s / sdtp_s,
                     "flops_ratio": flops_dense / flops_sdtp,
                     "speedup_share_of_flops_ratio": (dense_s / sdtp_s) / (flops_dense / flops_sdtp)})
        print(f"{context:>6} tokens  TTFT dense {dense_s:.3f}s sdtp {sdtp_s:.3f}s ({dense_s / sdtp_s:.2f}x, FLOPs "
              f"{flops_dense / flops_sdtp:.2f}x)", flush=True)
    import vllm

    result = {
        "rows": rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "vllm": vllm.__version__, "torch": torch.__version__},
        "date": utc_timestamp(),
        "preset": "cpu", "model": PRESETS["cpu"]["model"], "dtype": "float32", "sdtp": sdtp.to_dict(),
        "timing": f"best of {args.repeats} generate(max_tokens=1) wall times after a warm-up, one engine per model, "
                  "enforce_eager, prefix caching and chunked prefill off",
        "flops_method": FLOPS_METHOD + " (prefill plus the first token's LM head)",
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
