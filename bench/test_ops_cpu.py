"""Micro benchmarks of the CPU ops against their python_ref composition, measured in the same run.

    mkdir -p build/bench && pytest bench/test_ops_cpu.py --benchmark-json build/bench/ops-cpu-raw.json
    python bench/summarize.py build/bench/ops-cpu-raw.json --out bench/results/ops-cpu.json

SDTP_BENCH_QUICK=1 runs one small shape per op (to check that the benchmark runs, not to measure).
"""
import os

import pytest
import torch

import python_ref
import sdtp_kernels

QUICK = os.environ.get("SDTP_BENCH_QUICK") == "1"
D, H = (256, 64) if QUICK else (4096, 1024)
SHAPES = [(1, 512)] if QUICK else [(B, N) for B in (1, 4) for N in (4096, 32768)]
IMPLS = {"sdtp": sdtp_kernels, "reference": python_ref}


def run(benchmark, group, fn, *args, rounds=5):
    benchmark.group = group
    benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("B,N", SHAPES)
def test_select_tokens(benchmark, impl, B, N):
    scores = torch.randn(B, N, generator=torch.Generator().manual_seed(0))
    run(benchmark, f"select_tokens B={B} N={N}", IMPLS[impl].select_tokens, scores, N // 2, None, 4, N // 10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("B,N", SHAPES)
def test_compact(benchmark, impl, B, N):
    x = torch.randn(B, N, D)
    index, _ = sdtp_kernels.select_tokens(torch.randn(B, N), N // 2, None, 4, N // 10)
    run(benchmark, f"compact B={B} N={N} D={D}", IMPLS[impl].compact, x, index, 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("B,N", SHAPES)
def test_saliency_score(benchmark, impl, B, N):
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(B, N, D, generator=g), torch.ones(D), torch.randn(H, D, generator=g) / D**0.5,
            torch.zeros(H), torch.randn(H, generator=g) / H**0.5, torch.tensor(0.0))
    run(benchmark, f"saliency_score B={B} N={N} D={D} H={H}", IMPLS[impl].saliency_score, *args, rounds=3)
