"""CUDA micro benchmarks of the sdtp ops against their PyTorch baselines and the device's measured ceilings, all in
one run. CUDA-event timing: warm-up calls, then the median of many timed calls, each call timed on its own
(start event, call, end event, synchronise), so a call's host work and its one host read count as they do for a user.

    python bench/cuda_micro.py OUT.json [--quick] [--only select|compact|score]

- select_tokens (fp32 scores, num_sink=4, num_local=N/10) vs python_ref.select_tokens (sort based) and vs a plain
  torch.topk + sort with the protected tokens forced in, for B in {1, 8}, N in {4K, 32K, 128K}, keep in {0.5N, 0.9N};
- compact of B*N = 32K tokens, D = 4096, bf16, vs the device-to-device copy bandwidth measured here;
- saliency_score (D = 4096, H = 1024, bf16) for 16K..128K tokens vs the unfused PyTorch composition (RMSNorm,
  Linear, GELU, Linear) and vs the roofline bound max(bytes / copy bandwidth, flops / bf16 matmul rate).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

SECTIONS = ("select", "compact", "score")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default="build/bench/cuda_micro.json", help="JSON file to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (a smoke run)")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per measurement (default: by section)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------------------
def cuda_time_ms(torch, fn, warmup=5, iters=30):
    """Median milliseconds of fn() over `iters` calls after `warmup` calls, each timed alone by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iters": iters}


def copy_bandwidth(torch, nbytes, iters=20):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = max(1, nbytes // 2)
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    t = cuda_time_ms(torch, lambda: dst.copy_(src), warmup=3, iters=iters)
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    return {"bytes": moved, **t, "bytes_per_s": moved / (t["median_ms"] * 1e-3)}


def matmul_rate(torch, m, k, n, iters=10):
    """bf16 matmul FLOP/s of [m, k] @ [k, n]."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    t = cuda_time_ms(torch, lambda: a @ b, warmup=3, iters=iters)
    del a, b
    return {"shape": [m, k, n], **t, "flop_per_s": 2.0 * m * k * n / (t["median_ms"] * 1e-3)}


# --------------------------------------------------------------------------------------------------------------
def topk_select(torch, scores, keep, num_sink, num_local):
    """The plain PyTorch way for rows without padding: protected tokens forced in with +inf, topk, sort."""
    B, N = scores.shape
    pos = torch.arange(N, device=scores.device)
    protected = (pos < num_sink) | (pos >= N - num_local)
    s = scores.float().masked_fill(protected, math.inf)
    k = max(min(keep, N), int(protected.sum()))
    index = s.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    return index, torch.full((B,), k, dtype=torch.int64, device=scores.device)


def bench_select(torch, sdtp, ref, quick, iters):
    rows = []
    shapes = [(B, N) for B in (1, 8) for N in (4096, 32768, 131072)]
    if quick:
        shapes = [(1, 4096), (8, 32768)]
    g = torch.Generator(device="cuda").manual_seed(0)
    for B, N in shapes:
        scores = torch.randn(B, N, device="cuda", generator=g)
        for frac in (0.5, 0.9):
            keep, num_sink, num_local = int(frac * N), 4, N // 10
            ours = lambda: sdtp.select_tokens(scores, keep, None, num_sink, num_local)
            idx, counts = ours()
            K = idx.shape[1]
            ours_w = lambda: sdtp.select_tokens(scores, keep, None, num_sink, num_local, width=K)
            base_ref = lambda: ref.select_tokens(scores, keep, None, num_sink, num_local)
            base_topk = lambda: topk_select(torch, scores, keep, num_sink, num_local)
            ref_idx, ref_counts = base_ref()
            topk_idx, _ = base_topk()
            row = {
                "B": B, "N": N, "keep": keep, "num_sink": num_sink, "num_local": num_local, "K": K,
                "equal_to_reference": bool(torch.equal(idx, ref_idx) and torch.equal(counts, ref_counts)),
                "equal_to_topk": bool(torch.equal(idx, topk_idx)),
                "sdtp": cuda_time_ms(torch, ours, iters=iters),
                "sdtp_width_given": cuda_time_ms(torch, ours_w, iters=iters),
                "python_ref": cuda_time_ms(torch, base_ref, iters=iters),
                "topk_sort": cuda_time_ms(torch, base_topk, iters=iters),
            }
            t = row["sdtp"]["median_ms"]
            row["speedup_vs_topk_sort"] = row["topk_sort"]["median_ms"] / t
            row["speedup_vs_python_ref"] = row["python_ref"]["median_ms"] / t
            row["speedup_width_given_vs_topk_sort"] = row["topk_sort"]["median_ms"] / row["sdtp_width_given"]["median_ms"]
            rows.append(row)
            print(f"select B={B} N={N} keep={keep}: sdtp {t:.3f} ms, width given "
                  f"{row['sdtp_width_given']['median_ms']:.3f} ms, topk+sort {row['topk_sort']['median_ms']:.3f} ms, "
                  f"python_ref {row['python_ref']['median_ms']:.3f} ms, x{row['speedup_vs_topk_sort']:.2f} vs topk, "
                  f"equal={row['equal_to_reference']}", flush=True)
        del scores
    return {
        "rows": rows,
        "target": "speedup_vs_topk_sort >= 3 for every row",
        "min_speedup_vs_topk_sort": min(r["speedup_vs_topk_sort"] for r in rows),
        "min_speedup_vs_python_ref": min(r["speedup_vs_python_ref"] for r in rows),
        "all_equal_to_reference": all(r["equal_to_reference"] for r in rows),
    }


def bench_compact(torch, sdtp, ref, quick, iters, ceilings):
    D = 4096
    rows = []
    shapes = [(8, 4096), (1, 32768)] if not quick else [(8, 4096)]
    for B, N in shapes:
        x = torch.randn(B, N, D, device="cuda", dtype=torch.bfloat16)
        for frac in (0.5, 0.9):
            index, _ = sdtp.select_tokens(torch.randn(B, N, device="cuda"), int(frac * N), None, 4, N // 10)
            out = sdtp.compact(x, index, 1)
            equal = bool(torch.equal(out, ref.compact(x, index, 1)))
            t = cuda_time_ms(torch, lambda: sdtp.compact(x, index, 1), iters=iters)
            kept_rows = int((index >= 0).sum())
            moved = 2 * kept_rows * D * x.element_size() + index.numel() * 8  # read + write, plus the index
            same_size = copy_bandwidth(torch, kept_rows * D * x.element_size(), iters=iters)
            bw = moved / (t["median_ms"] * 1e-3)
            ceiling = max(same_size["bytes_per_s"], ceilings["copy_bandwidth"]["bytes_per_s"])
            tv = cuda_time_ms(torch, lambda: sdtp.compact_varlen(x, index), iters=iters)
            row = {
                "B": B, "N": N, "D": D, "dtype": "bfloat16", "K": index.shape[1], "kept_rows": kept_rows,
                "equal_to_reference": equal, "compact": t, "bytes_moved": moved, "bytes_per_s": bw,
                "copy_same_bytes": same_size, "fraction_of_copy_bandwidth": bw / ceiling,
                "compact_varlen": tv,
                "varlen_fraction_of_copy_bandwidth": moved / (tv["median_ms"] * 1e-3) / ceiling,
            }
            rows.append(row)
            print(f"compact B={B} N={N} K={index.shape[1]}: {t['median_ms']:.3f} ms, {bw / 1e12:.2f} TB/s = "
                  f"{100 * row['fraction_of_copy_bandwidth']:.1f}% of copy; varlen {tv['median_ms']:.3f} ms", flush=True)
        del x
    return {
        "rows": rows,
        "target": "fraction_of_copy_bandwidth >= 0.8",
        "min_fraction_of_copy_bandwidth": min(r["fraction_of_copy_bandwidth"] for r in rows),
        "all_equal_to_reference": all(r["equal_to_reference"] for r in rows),
    }


def bench_score(torch, sdtp, quick, iters, ceilings):
    import torch.nn.functional as F

    D, H = 4096, 1024
    token_counts = [16384, 32768, 65536, 131072] if not quick else [16384]
    g = torch.Generator(device="cuda").manual_seed(0)
    dt = torch.bfloat16
    nw = (1 + 0.1 * torch.randn(D, device="cuda", generator=g)).to(dt)
    w1 = (torch.randn(H, D, device="cuda", generator=g) / D**0.5).to(dt)
    b1 = (0.1 * torch.randn(H, device="cuda", generator=g)).to(dt)
    w2 = (torch.randn(H, device="cuda", generator=g) / H**0.5).to(dt)
    b2 = torch.tensor(0.25, device="cuda").to(dt)
    rms_norm = getattr(F, "rms_norm", None)

    def unfused(x):
        if rms_norm is not None:
            n = rms_norm(x, (D,), nw, 1e-6)
        else:
            xf = x.float()
            n = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dt) * nw
        h = F.gelu(F.linear(n, w1, b1))
        return F.linear(h, w2.unsqueeze(0), b2.reshape(1)).squeeze(-1).float()

    rows = []
    for T in token_counts:
        x = torch.randn(T, D, device="cuda", dtype=dt, generator=g)
        ours = sdtp.saliency_score(x, nw, w1, b1, w2, b2)
        base = unfused(x)
        sub = slice(0, min(T, 4096))
        exact = _exact_score(torch, x[sub], nw, w1, b1, w2, b2)
        t = cuda_time_ms(torch, lambda: sdtp.saliency_score(x, nw, w1, b1, w2, b2), warmup=3, iters=iters)
        tb = cuda_time_ms(torch, lambda: unfused(x), warmup=3, iters=iters)
        nbytes = T * D * 2 + H * D * 2 + T * 4
        flops = 2.0 * T * D * H
        rate = max(ceilings["matmul_bf16_8192"]["flop_per_s"], matmul_rate(torch, T, D, H, iters=5)["flop_per_s"])
        bound_ms = 1e3 * max(nbytes / ceilings["copy_bandwidth"]["bytes_per_s"], flops / rate)
        row = {
            "tokens": T, "D": D, "H": H, "dtype": "bfloat16",
            "sdtp": t, "unfused_torch": tb, "speedup_vs_unfused": tb["median_ms"] / t["median_ms"],
            "bytes": nbytes, "flops": flops, "matmul_rate_flop_per_s": rate, "roofline_bound_ms": bound_ms,
            "ratio_to_roofline": t["median_ms"] / bound_ms, "achieved_tflop_per_s": flops / (t["median_ms"] * 1e-3) / 1e12,
            "max_abs_err_sdtp_vs_fp64_first_4096": float((ours[sub].double() - exact).abs().max()),
            "max_abs_err_unfused_vs_fp64_first_4096": float((base[sub].double() - exact).abs().max()),
        }
        rows.append(row)
        print(f"score T={T}: sdtp {t['median_ms']:.3f} ms ({row['achieved_tflop_per_s']:.0f} TFLOP/s), unfused "
              f"{tb['median_ms']:.3f} ms, x{row['speedup_vs_unfused']:.2f}, {row['ratio_to_roofline']:.2f}x roofline "
              f"({bound_ms:.3f} ms); err {row['max_abs_err_sdtp_vs_fp64_first_4096']:.2e} vs unfused "
              f"{row['max_abs_err_unfused_vs_fp64_first_4096']:.2e}", flush=True)
        del x, ours, base
    return {
        "rows": rows,
        "target": "speedup_vs_unfused >= 1.5 and ratio_to_roofline <= 2 for every row",
        "min_speedup_vs_unfused": min(r["speedup_vs_unfused"] for r in rows),
        "max_ratio_to_roofline": max(r["ratio_to_roofline"] for r in rows),
    }


def _exact_score(torch, x, nw, w1, b1, w2, b2):
    xd = x.double()
    n = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * nw.double()
    h = torch.nn.functional.gelu(n @ w1.double().T + b1.double())
    return h @ w2.double() + b2.double()


# --------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    sections = args.only or list(SECTIONS)
    import torch

    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
              "torch": torch.__version__, "sections": sections, "quick": args.quick}
    if not torch.cuda.is_available():
        result["error"] = "no CUDA device"
        _write(args.out, result)
        print("cuda_micro: no CUDA device", file=sys.stderr)
        return 2

    import python_ref
    import sdtp_kernels

    result["build_info"] = sdtp_kernels.build_info()
    result["device"] = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    result["multiprocessors"] = props.multi_processor_count
    iters = args.iters or (10 if args.quick else 30)
    ceilings = {
        "copy_bandwidth": copy_bandwidth(torch, 1 << 31),
        "matmul_bf16_8192": matmul_rate(torch, 8192, 8192, 8192),
    }
    result["ceilings"] = ceilings
    print(f"ceilings: copy {ceilings['copy_bandwidth']['bytes_per_s'] / 1e12:.2f} TB/s (read + write), bf16 matmul "
          f"{ceilings['matmul_bf16_8192']['flop_per_s'] / 1e12:.0f} TFLOP/s", flush=True)
    failures = {}
    for name in sections:
        try:
            if name == "select":
                result["select_tokens"] = bench_select(torch, sdtp_kernels, python_ref, args.quick, iters)
            elif name == "compact":
                result["compact"] = bench_compact(torch, sdtp_kernels, python_ref, args.quick, iters, ceilings)
            else:
                result["saliency_score"] = bench_score(torch, sdtp_kernels, args.quick, max(5, iters // 3), ceilings)
        except Exception as e:  # keep the other sections' figures
            failures[name] = f"{type(e).__name__}: {e}"
            print(f"cuda_micro: section {name} failed: {failures[name]}", file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
        _write(args.out, result)
    if failures:
        result["failures"] = failures
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(args.out, result)
    return 1 if failures else 0


def _write(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
