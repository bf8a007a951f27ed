"""CUDA micro benchmarks of the sdtp ops against their PyTorch baselines and the device's measured ceilings, all in
one run. CUDA-event timing: warm-up calls, then the median of many timed calls, each call timed on its own
(start event, call, end event, synchronise), so a call's host work and its one host read count as they do for a user.
The JSON records the source, build and matmul settings it measured (sdtp_kernels.measure.provenance).

    python bench/cuda_micro.py OUT.json [--quick | --tiny] [--only select|compact|score] [--device cpu]

- select_tokens (fp32 scores, num_sink=4, num_local=N/10) vs python_ref.select_tokens (sort based) and vs a plain
  torch.topk + sort with the protected tokens forced in, for B in {1, 8}, N in {4K, 32K, 128K}, keep in {0.5N, 0.9N};
  and in the transformers integration's own configuration (bf16 scores, a mask, keep and num_local as device
  tensors, width given, check=False);
- compact of B*N = 32K tokens, D = 4096, bf16, checked and with check=False (no read back), vs the device-to-device
  copy bandwidth measured here;
- saliency_score (D = 4096, H = 1024; bf16 from 512 to 128K tokens, fp32 at 16K) on both CUDA paths (fused, gemm:
  csrc/cuda/score_paths.h) and the one SDTP_SCORE_PATH=auto picks, vs the unfused PyTorch composition (RMSNorm, Linear,
  GELU, Linear in the input dtype; the target's baseline), vs the op's own float32 numerics unfused, and vs the
  roofline bound max(bytes / copy bandwidth, flops / matmul rate of the dtype): the figures that set the dispatch
  rule. The five are timed in interleaved rounds, and speed-ups are medians of per-round ratios with a 90% bootstrap
  interval. Each is also queued back to back behind a device-side sleep (`queued_ms`): launch latency hidden, as
  inside a prefill.
--device cpu with --tiny runs every section's code on small shapes without a GPU (scripts/gpu_check.sh --dry-run).
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
    p.add_argument("out", nargs="?", default="build/bench/cuda_micro.json",
                   help="JSON file to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (a smoke run)")
    p.add_argument("--tiny", action="store_true", help="toy shapes, to exercise the code (with --device cpu)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default: %(default)s")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed calls per measurement (default: 30, --quick 10, --tiny 2); saliency_score: 3N + 10 "
                        "interleaved rounds and 3N calls queued")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------------------
DEVICE = "cuda"  # set by main(); --device cpu exercises the code without a GPU


def _time_call(torch, fn):
    """(device ms, host ms) of one call of fn(), timed alone: CUDA events around it, then a synchronise (the wall
    clock on the CPU); the host figure is the time fn() takes to return, which is all launch work when it is close
    to the device figure."""
    if DEVICE != "cuda":
        t0 = time.perf_counter()
        fn()
        ms = 1e3 * (time.perf_counter() - t0)
        return ms, ms
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    fn()
    host = 1e3 * (time.perf_counter() - t0)
    end.record()
    end.synchronize()
    return start.elapsed_time(end), host


def _sync(torch):
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _stats(times, host):
    return {"median_ms": statistics.median(times), "min_ms": min(times), "host_median_ms": statistics.median(host),
            "iters": len(times)}


def cuda_time_ms(torch, fn, warmup=5, iters=30):
    """Median milliseconds of fn() over `iters` calls after `warmup` calls, each timed alone (_time_call)."""
    for _ in range(warmup):
        fn()
    _sync(torch)
    times, host = zip(*(_time_call(torch, fn) for _ in range(iters)))
    return _stats(times, host)


def paired_time_ms(torch, variants, warmup=3, rounds=100):
    """Each variant (name -> (fn, SDTP_SCORE_PATH or None)) timed alone as cuda_time_ms does, interleaved: every round
    calls each variant once, in an order rotated from round to round, so that drift (clocks, other load) reaches all
    of them alike and each round gives paired samples. The score path is set before a call's timing starts."""
    names = list(variants)
    for fn, path in variants.values():
        with score_path(path):
            for _ in range(warmup):
                fn()
    _sync(torch)
    samples = {name: ([], []) for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, path = variants[name]
            with score_path(path):
                device_ms, host_ms = _time_call(torch, fn)
            samples[name][0].append(device_ms)
            samples[name][1].append(host_ms)
    return {name: {**_stats(*samples[name]), "samples_ms": samples[name][0]} for name in names}


def paired_speedup(baseline_ms, ours_ms, resamples=2000):
    """Median over rounds of baseline / ours (paired samples of paired_time_ms), with a 90% bootstrap interval of
    that median (fixed seed)."""
    import random

    ratios = [b / o for b, o in zip(baseline_ms, ours_ms)]
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return {"median": statistics.median(ratios),
            "interval90": [medians[int(0.05 * resamples)], medians[int(0.95 * resamples) - 1]]}


SLEEP_CYCLES_PER_MS = None  # torch.cuda._sleep's rate on this device, measured by main()


def sleep_cycles_per_ms(torch, cycles=10_000_000):
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / start.elapsed_time(end)


def queued_time_ms(torch, fn, iters=30):
    """Milliseconds per call of `iters` calls queued back to back between two CUDA events (wall clock on the CPU),
    as in a prefill where the GPU is busy with the layers before. On CUDA a device-side sleep longer than the host
    takes to queue the calls goes first, so the start event fires with every call already queued: the figure is
    the device time of the calls' kernels and the gaps between them, not the host's issue rate. `queue_kept_full`
    says whether the sleep outlasted the host's queueing; False can also mean that the host waited on a full launch
    queue (about a thousand pending launches), which kept the device busy too."""
    def queue():  # host milliseconds to issue the calls
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return 1e3 * (time.perf_counter() - t0)

    fn()
    if DEVICE != "cuda":
        ms = queue() / iters
        return {"queued_ms": ms, "queued_host_ms": ms, "queue_kept_full": None}
    torch.cuda.synchronize()
    sleep_ms = 2 * queue() + 1.0  # twice what the host took to queue them with the GPU idle
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(sleep_ms * SLEEP_CYCLES_PER_MS))
    start.record()
    host_ms = queue()
    end.record()
    end.synchronize()
    return {"queued_ms": start.elapsed_time(end) / iters, "queued_host_ms": host_ms / iters,
            "queue_kept_full": host_ms < sleep_ms}


def kernel_breakdown(torch, fn, iters=5):
    """Microseconds per call that each kernel fn() launches takes on the device (torch.profiler), largest first.
    Empty on the CPU, which has no kernels to list."""
    from torch.autograd import DeviceType

    from sdtp_kernels.measure import profiling

    fn()
    with profiling(DEVICE) as prof:
        for _ in range(iters):
            fn()
    totals = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            totals[e.name] = totals.get(e.name, 0.0) + e.time_range.elapsed_us() / iters
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def copy_bandwidth(torch, nbytes, iters=20):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = max(1, nbytes // 2)
    src = torch.empty(n, dtype=torch.bfloat16, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    t = cuda_time_ms(torch, lambda: dst.copy_(src), warmup=3, iters=iters)
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    return {"bytes": moved, **t, "bytes_per_s": moved / (t["median_ms"] * 1e-3)}


def matmul_rate(torch, m, k, n, dtype, iters=10):
    """Matmul FLOP/s of [m, k] @ [k, n] in `dtype` (float32 under the current TF32 settings, off by default)."""
    a = torch.randn(m, k, device=DEVICE, dtype=dtype)
    b = torch.randn(k, n, device=DEVICE, dtype=dtype)
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
    k = max(min(keep, N), min(N, num_sink + num_local))  # the protected count, known on the host
    index = s.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    return index, torch.full((B,), k, dtype=torch.int64, device=scores.device)


def integration_select(torch, sdtp, scores, keep, num_sink, num_local):
    """select_tokens as the transformers integration calls it: bf16 scores, a padding mask (the first 1/16 of row 0
    padded), keep and num_local as device tensors, the output width given, check=False (no read back)."""
    B, N = scores.shape
    valid = torch.ones(B, N, dtype=torch.bool, device=DEVICE)
    valid[0, : N // 16] = False
    keep_t = torch.full((B,), keep, device=DEVICE)
    local_t = torch.full((B,), num_local, device=DEVICE)
    bf16 = scores.bfloat16()
    K = int(sdtp.select_tokens(bf16, keep_t, valid, num_sink, local_t)[0].shape[1])
    return lambda: sdtp.select_tokens(bf16, keep_t, valid, num_sink, local_t, width=K, check=False)


def bench_select(torch, sdtp, ref, size, iters):
    rows = []
    shapes = {"full": [(B, N) for B in (1, 8) for N in (4096, 32768, 131072)],
              "quick": [(1, 4096), (8, 32768)], "tiny": [(2, 256)]}[size]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for B, N in shapes:
        scores = torch.randn(B, N, device=DEVICE, generator=g)
        for frac in (0.5, 0.9):
            keep, num_sink, num_local = int(frac * N), 4, N // 10
            ours = lambda: sdtp.select_tokens(scores, keep, None, num_sink, num_local)
            idx, counts = ours()
            K = idx.shape[1]
            ours_w = lambda: sdtp.select_tokens(scores, keep, None, num_sink, num_local, width=K)
            base_ref = lambda: ref.select_tokens(scores, keep, None, num_sink, num_local)
            base_topk = lambda: topk_select(torch, scores, keep, num_sink, num_local)
            integration = integration_select(torch, sdtp, scores, keep, num_sink, num_local)
            ref_idx, ref_counts = base_ref()
            topk_idx, _ = base_topk()
            row = {
                "B": B, "N": N, "keep": keep, "num_sink": num_sink, "num_local": num_local, "K": K,
                "equal_to_reference": bool(torch.equal(idx, ref_idx) and torch.equal(counts, ref_counts)),
                "equal_to_topk": bool(torch.equal(idx, topk_idx)),
                "sdtp": cuda_time_ms(torch, ours, iters=iters),
                "sdtp_width_given": cuda_time_ms(torch, ours_w, iters=iters),
                "sdtp_integration_config": cuda_time_ms(torch, integration, iters=iters),
                "python_ref": cuda_time_ms(torch, base_ref, iters=iters),
                "topk_sort": cuda_time_ms(torch, base_topk, iters=iters),
            }
            t = row["sdtp"]["median_ms"]
            row["speedup_vs_topk_sort"] = row["topk_sort"]["median_ms"] / t
            row["speedup_vs_python_ref"] = row["python_ref"]["median_ms"] / t
            row["speedup_width_given_vs_topk_sort"] = (row["topk_sort"]["median_ms"]
                                                       / row["sdtp_width_given"]["median_ms"])
            rows.append(row)
            print(f"select B={B} N={N} keep={keep}: sdtp {t:.3f} ms, width given "
                  f"{row['sdtp_width_given']['median_ms']:.3f} ms, integration's config "
                  f"{row['sdtp_integration_config']['median_ms']:.3f} ms, "
                  f"topk+sort {row['topk_sort']['median_ms']:.3f} ms, "
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


def bench_compact(torch, sdtp, ref, size, iters, ceilings):
    D = 64 if size == "tiny" else 4096
    rows = []
    shapes = {"full": [(8, 4096), (1, 32768)], "quick": [(8, 4096)], "tiny": [(2, 256)]}[size]
    for B, N in shapes:
        x = torch.randn(B, N, D, device=DEVICE, dtype=torch.bfloat16)
        for frac in (0.5, 0.9):
            index, _ = sdtp.select_tokens(torch.randn(B, N, device=DEVICE), int(frac * N), None, 4, N // 10)
            out = sdtp.compact(x, index, 1)
            equal = bool(torch.equal(out, ref.compact(x, index, 1)))
            t = cuda_time_ms(torch, lambda: sdtp.compact(x, index, 1), iters=iters)
            kept_rows = int((index >= 0).sum())
            moved = 2 * kept_rows * D * x.element_size() + index.numel() * 8  # read + write, plus the index
            same_size = copy_bandwidth(torch, kept_rows * D * x.element_size(), iters=iters)
            bw = moved / (t["median_ms"] * 1e-3)
            ceiling = max(same_size["bytes_per_s"], ceilings["copy_bandwidth"]["bytes_per_s"])
            tu = cuda_time_ms(torch, lambda: sdtp.compact(x, index, 1, check=False), iters=iters)
            tv = cuda_time_ms(torch, lambda: sdtp.compact_varlen(x, index), iters=iters)
            row = {
                "B": B, "N": N, "D": D, "dtype": "bfloat16", "K": index.shape[1], "kept_rows": kept_rows,
                "equal_to_reference": equal, "compact": t, "bytes_moved": moved, "bytes_per_s": bw,
                "copy_same_bytes": same_size, "fraction_of_copy_bandwidth": bw / ceiling,
                "compact_unchecked": tu,  # check=False, as the integrations call it: no read back of the range
                "unchecked_fraction_of_copy_bandwidth": moved / (tu["median_ms"] * 1e-3) / ceiling,
                "compact_varlen": tv,
                "varlen_fraction_of_copy_bandwidth": moved / (tv["median_ms"] * 1e-3) / ceiling,
            }
            rows.append(row)
            print(f"compact B={B} N={N} K={index.shape[1]}: {t['median_ms']:.3f} ms, {bw / 1e12:.2f} TB/s = "
                  f"{100 * row['fraction_of_copy_bandwidth']:.1f}% of copy (check=False "
                  f"{100 * row['unchecked_fraction_of_copy_bandwidth']:.1f}%); varlen {tv['median_ms']:.3f} ms",
                  flush=True)
        del x
    return {
        "rows": rows,
        "target": "fraction_of_copy_bandwidth >= 0.8",
        "min_fraction_of_copy_bandwidth": min(r["fraction_of_copy_bandwidth"] for r in rows),
        "min_unchecked_fraction_of_copy_bandwidth": min(r["unchecked_fraction_of_copy_bandwidth"] for r in rows),
        "all_equal_to_reference": all(r["equal_to_reference"] for r in rows),
    }


SCORE_PATHS = ("fused", "gemm", "auto")  # SDTP_SCORE_PATH values (csrc/cuda/score_paths.h)


def score_path(path):
    """SDTP_SCORE_PATH = path (the op reads it on every call) inside the block, nothing for None: set around the
    timed calls, not in them, so that the path's figures do not include setting it."""
    from sdtp_kernels.measure import environment_variable

    return environment_variable("SDTP_SCORE_PATH", path)


def bench_score(torch, sdtp, size, rounds, queued_iters, ceilings):
    import torch.nn.functional as F

    D, H = (64, 16) if size == "tiny" else (4096, 1024)
    cases = {"full": [(T, torch.bfloat16) for T in (512, 4096, 16384, 32768, 65536, 131072)] + [(16384, torch.float32)],
             "quick": [(4096, torch.bfloat16), (16384, torch.bfloat16), (16384, torch.float32)],
             "tiny": [(64, torch.bfloat16), (64, torch.float32)]}[size]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    rows = []
    for T, dt in cases:
        nw = (1 + 0.1 * torch.randn(D, device=DEVICE, generator=g)).to(dt)
        w1 = (torch.randn(H, D, device=DEVICE, generator=g) / D**0.5).to(dt)
        b1 = (0.1 * torch.randn(H, device=DEVICE, generator=g)).to(dt)
        w2 = (torch.randn(H, device=DEVICE, generator=g) / H**0.5).to(dt)
        b2 = torch.tensor(0.25, device=DEVICE).to(dt)

        def unfused(x):  # the target's baseline: every step in the input dtype (bf16 intermediates)
            h = F.gelu(F.linear(F.rms_norm(x, (D,), nw, 1e-6), w1, b1))
            return F.linear(h, w2.unsqueeze(0), b2.reshape(1)).squeeze(-1).float()

        def unfused_fp32_intermediates(x):  # the op's numerics unfused: fold in the input dtype, the rest float32
            wf = (w1.float() * nw.float()).to(dt)
            pre = (torch.mm(x, wf.T, out_dtype=torch.float32) if DEVICE == "cuda" and dt != torch.float32
                   else torch.mm(x.float(), wf.float().T))  # CPU torch has no out_dtype mm (the dry run's shapes)
            inv_rms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
            return F.gelu(pre * inv_rms + b1.float()) @ w2.float() + b2.float()

        x = torch.randn(T, D, device=DEVICE, dtype=dt, generator=g)
        sub = slice(0, min(T, 4096))
        exact = _exact_score(torch, x[sub], nw, w1, b1, w2, b2)
        nbytes = T * D * x.element_size() + H * D * x.element_size() + T * 4
        flops = 2.0 * T * D * H
        rate_key = "matmul_fp32" if dt == torch.float32 else "matmul_bf16"
        rate = max(ceilings[rate_key]["flop_per_s"], matmul_rate(torch, T, D, H, dt, iters=5)["flop_per_s"])
        bound_ms = 1e3 * max(nbytes / ceilings["copy_bandwidth"]["bytes_per_s"], flops / rate)

        def call():
            return sdtp.saliency_score(x, nw, w1, b1, w2, b2)

        variants = {"unfused_torch": (lambda: unfused(x), None),
                    "unfused_fp32_intermediates": (lambda: unfused_fp32_intermediates(x), None),
                    **{path: (call, path) for path in SCORE_PATHS}}
        timed = paired_time_ms(torch, variants, rounds=rounds)
        samples = {name: t.pop("samples_ms") for name, t in timed.items()}
        tb, tf = timed["unfused_torch"], timed["unfused_fp32_intermediates"]
        tb.update(queued_time_ms(torch, lambda: unfused(x), iters=queued_iters))
        row = {"tokens": T, "D": D, "H": H, "dtype": str(dt).replace("torch.", ""), "rounds": rounds,
               "unfused_torch": tb, "unfused_fp32_intermediates": tf,
               "bytes": nbytes, "flops": flops, "matmul_rate_flop_per_s": rate, "roofline_bound_ms": bound_ms,
               "max_abs_err_unfused_vs_fp64_first_4096": float((unfused(x)[sub].double() - exact).abs().max()),
               "max_abs_err_unfused_fp32_intermediates_vs_fp64_first_4096":
                   float((unfused_fp32_intermediates(x)[sub].double() - exact).abs().max())}
        for path in SCORE_PATHS:
            t = timed[path]
            with score_path(path):
                t.update(queued_time_ms(torch, call, iters=queued_iters))
                err = float((call()[sub].double() - exact).abs().max())
                if path == "auto":
                    row["auto_path"] = sdtp.cuda_score_path(dt) if DEVICE == "cuda" else None  # what auto ran
            paired = paired_speedup(samples["unfused_torch"], samples[path])
            row[path] = {**t, "speedup_vs_unfused": paired["median"],
                         "speedup_vs_unfused_interval90": paired["interval90"],
                         "speedup_vs_unfused_fp32_intermediates":
                             paired_speedup(samples["unfused_fp32_intermediates"], samples[path])["median"],
                         "queued_speedup_vs_unfused": tb["queued_ms"] / t["queued_ms"],
                         "ratio_to_roofline": t["median_ms"] / bound_ms,
                         "achieved_tflop_per_s": flops / (t["median_ms"] * 1e-3) / 1e12,
                         "max_abs_err_vs_fp64_first_4096": err}
        if T in (64, 4096, 32768):  # where the time goes, for the next change of the rule or of the kernels
            with score_path("gemm"):
                gemm = kernel_breakdown(torch, call)
            row["kernels_us_per_call"] = {"gemm": gemm, "unfused_torch": kernel_breakdown(torch, lambda: unfused(x))}
        best = "gemm" if paired_speedup(samples["fused"], samples["gemm"])["median"] > 1.0 else "fused"
        row["faster_path"] = best
        row["auto_within_5pct_of_faster"] = paired_speedup(samples[best], samples["auto"])["median"] >= 1 / 1.05
        row["auto_not_slower_than_unfused"] = row["auto"]["speedup_vs_unfused"] >= 1.0
        row["auto_not_slower_than_unfused_queued"] = row["auto"]["queued_speedup_vs_unfused"] >= 1.0
        rows.append(row)
        print(f"score T={T} {row['dtype']}: fused {row['fused']['median_ms']:.3f} ms, "
              f"gemm {row['gemm']['median_ms']:.3f} ms, auto {row['auto']['median_ms']:.3f} ms, "
              f"unfused {tb['median_ms']:.3f} ms (fp32 intermediates {tf['median_ms']:.3f} ms), roofline "
              f"{bound_ms:.3f} ms; auto vs unfused x{row['auto']['speedup_vs_unfused']:.3f} "
              f"[{row['auto']['speedup_vs_unfused_interval90'][0]:.3f}, "
              f"{row['auto']['speedup_vs_unfused_interval90'][1]:.3f}]; queued: auto "
              f"{row['auto']['queued_ms']:.3f} ms, unfused {tb['queued_ms']:.3f} ms; "
              f"err fused {row['fused']['max_abs_err_vs_fp64_first_4096']:.2e} gemm "
              f"{row['gemm']['max_abs_err_vs_fp64_first_4096']:.2e} unfused "
              f"{row['max_abs_err_unfused_vs_fp64_first_4096']:.2e}", flush=True)
        del x
    return {
        "rows": rows,
        "target": ("auto never slower than the unfused composition in the input dtype (unfused_torch): the median "
                   "over interleaved rounds of its time / auto's time >= 1, each call alone and queued; auto within "
                   "5% of the faster path"),
        "baselines": {
            "unfused_torch": "F.rms_norm, F.linear, F.gelu, F.linear, all in the input dtype: bf16 intermediates, "
                             "the fastest and least accurate unfused form (the target's baseline)",
            "unfused_fp32_intermediates": "the op's own numerics unfused: w1 * g in the input dtype, an mm with a "
                                          "float32 result, 1/rms, b1, GELU and the w2 dot in float32",
        },
        "auto_never_slower_than_unfused": all(r["auto_not_slower_than_unfused"] for r in rows),
        "auto_never_slower_than_unfused_queued": all(r["auto_not_slower_than_unfused_queued"] for r in rows),
        "auto_picks_the_faster_path": all(r["auto_within_5pct_of_faster"] for r in rows),
        "min_speedup_vs_unfused_auto": min(r["auto"]["speedup_vs_unfused"] for r in rows),
        "queues_kept_full": all(r[k]["queue_kept_full"] is not False for r in rows
                                for k in ("unfused_torch", *SCORE_PATHS)),
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
              "torch": torch.__version__, "sections": sections, "quick": args.quick, "tiny": args.tiny,
              "device_kind": args.device}
    global DEVICE, SLEEP_CYCLES_PER_MS
    DEVICE = args.device
    size = "tiny" if args.tiny else ("quick" if args.quick else "full")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        result["error"] = "no CUDA device"
        _write(args.out, result)
        print("cuda_micro: no CUDA device", file=sys.stderr)
        return 2

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # python_ref: not installed
    import python_ref
    import sdtp_kernels

    from sdtp_kernels.measure import provenance

    result["provenance"] = provenance()
    if DEVICE == "cuda":
        result["device"] = torch.cuda.get_device_name()
        result["multiprocessors"] = torch.cuda.get_device_properties(0).multi_processor_count
    iters = args.iters or {"full": 30, "quick": 10, "tiny": 2}[size]
    side = 256 if size == "tiny" else 8192
    ceilings = {
        "copy_bandwidth": copy_bandwidth(torch, 1 << (20 if size == "tiny" else 31)),
        "matmul_bf16": matmul_rate(torch, side, side, side, torch.bfloat16),
        "matmul_fp32": matmul_rate(torch, side, side, side, torch.float32),
    }
    result["ceilings"] = ceilings
    if DEVICE == "cuda":
        SLEEP_CYCLES_PER_MS = result["sleep_cycles_per_ms"] = sleep_cycles_per_ms(torch)
    print(f"ceilings: copy {ceilings['copy_bandwidth']['bytes_per_s'] / 1e12:.2f} TB/s (read + write), matmul "
          f"bf16 {ceilings['matmul_bf16']['flop_per_s'] / 1e12:.0f} TFLOP/s, fp32 "
          f"{ceilings['matmul_fp32']['flop_per_s'] / 1e12:.0f} TFLOP/s", flush=True)
    failures = {}
    for name in sections:
        try:
            if name == "select":
                result["select_tokens"] = bench_select(torch, sdtp_kernels, python_ref, size, iters)
            elif name == "compact":
                result["compact"] = bench_compact(torch, sdtp_kernels, python_ref, size, iters, ceilings)
            else:
                result["saliency_score"] = bench_score(torch, sdtp_kernels, size, max(3, 3 * iters + 10),
                                                       3 * iters, ceilings)
        except Exception as e:  # keep the other sections' figures
            failures[name] = f"{type(e).__name__}: {e}"
            print(f"cuda_micro: section {name} failed: {failures[name]}", file=sys.stderr, flush=True)
        if DEVICE == "cuda":
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
