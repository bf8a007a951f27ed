"""A small run of every CUDA op, for compute-sanitizer (memcheck, racecheck): shapes that take every kernel path
(several CTAs per row in select_tokens, padding masks, tensor arguments on the device, `width`, 16/8/4/2/1-byte
copies, several H tiles and ragged tiles in saliency_score) yet stay small enough to run under the tools.
Each result is checked against the CPU op (bitwise for select/compact); exits 1 on a mismatch.

    compute-sanitizer --tool memcheck python scripts/sanitizer_smoke.py
    python scripts/sanitizer_smoke.py --device cpu     # the same code without a GPU (gpu_check.sh --dry-run)

saliency_score runs on both CUDA paths (SDTP_SCORE_PATH = fused, gemm), or those --score-paths names.
"""
import argparse
import os
import sys

import torch

import sdtp_kernels

failures = []


def check(name, ok):
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    if not ok:
        failures.append(name)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default: %(default)s")
    parser.add_argument("--score-paths", nargs="+", default=["fused", "gemm"], choices=["fused", "gemm"],
                        help="saliency_score paths to run (default: both)")
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(0)

    # select_tokens
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        B, N = 3, 5000
        scores = torch.randn(B, N, generator=g).to(dtype)
        scores[0, 100:140] = float("nan")
        scores[1, 10:400] = 0.5  # ties
        scores[1, 400:420] = -0.0
        valid = torch.ones(B, N, dtype=torch.bool)
        valid[1, :700] = False  # left padding
        valid[2, 4000:] = False  # right padding
        keep = torch.tensor([2500, 10, 4999])
        local = torch.tensor([50, 0, 3000])
        want = sdtp_kernels.select_tokens(scores, keep, valid, 4, local)
        got = sdtp_kernels.select_tokens(scores.to(dev), keep.to(dev), valid.to(dev), 4, local.to(dev))
        check(f"select_tokens {dtype} masked, device tensors", same(got[0], want[0]) and same(got[1], want[1]))
        got = sdtp_kernels.select_tokens(scores.to(dev), keep, valid.to(dev).int(), 4, local, width=5000)
        want = sdtp_kernels.select_tokens(scores, keep, valid, 4, local, width=5000)
        check(f"select_tokens {dtype} int mask, width", same(got[0], want[0]) and same(got[1], want[1]))
    B, N = 2, 70000  # several CTAs per row
    scores = torch.randn(B, N, generator=g)
    for keep in (0, 5, 35000, 69990, N):
        want = sdtp_kernels.select_tokens(scores, keep, None, 4, 1000)
        got = sdtp_kernels.select_tokens(scores.to(dev), keep, None, 4, 1000)
        check(f"select_tokens N={N} keep={keep}", same(got[0], want[0]) and same(got[1], want[1]))
    empty = sdtp_kernels.select_tokens(torch.randn(0, 10, device=dev), 3)
    check("select_tokens B=0", empty[0].shape == (0, 0) and empty[1].shape == (0,))
    empty = sdtp_kernels.select_tokens(torch.randn(2, 0, device=dev), 3, width=2)
    check("select_tokens N=0 width=2", bool((empty[0] == -1).all()) and empty[0].shape == (2, 2))

    # compact / compact_varlen
    scores = torch.randn(2, 50, generator=g)
    index, _ = sdtp_kernels.select_tokens(scores, torch.tensor([30, 12]), None, 2, 3)
    cases = [
        ("bf16 [2,50,24]", torch.randn(2, 50, 24, generator=g).to(torch.bfloat16), 1),
        ("fp32 [2,3,50,5] dim=2", torch.randn(2, 3, 50, 5, generator=g), 2),
        ("int64 [2,50]", torch.arange(100).reshape(2, 50), 1),
        ("bool [2,50]", torch.rand(2, 50, generator=g) > 0.5, 1),
        ("fp16 [2,50,3]", torch.randn(2, 50, 3, generator=g).half(), 1),
        ("fp32 [2,50,8] non-contiguous", torch.randn(2, 50, 9, generator=g)[..., 1:], 1),
    ]
    cases = [(name, x, x.to(dev), dim) for name, x, dim in cases]
    # contiguous device views whose base is not 16-byte aligned: the 4- and 2-byte copy paths
    for name, dtype in (("fp32 [2,50,8] base+4B", torch.float32), ("bf16 [2,50,8] base+2B", torch.bfloat16)):
        flat = torch.randn(2 * 50 * 8 + 1, generator=g).to(dtype)
        cases.append((name, flat[1:].view(2, 50, 8), flat.to(dev)[1:].view(2, 50, 8), 1))
    for name, x, xd, dim in cases:
        want = sdtp_kernels.compact(x, index, dim)
        got = sdtp_kernels.compact(xd, index.to(dev), dim)
        check(f"compact {name}", same(got, want))
        if dim == 1:
            w = sdtp_kernels.compact_varlen(x, index)
            o = sdtp_kernels.compact_varlen(xd, index.to(dev))
            check(f"compact_varlen {name}", same(o[0], w[0]) and same(o[1], w[1]) and o[2] == w[2])
    x = torch.randn(3, 7, 16, device=dev)
    check("compact K=0", sdtp_kernels.compact(x, torch.empty(3, 0, dtype=torch.long, device=dev)).shape == (3, 0, 16))

    for path in args.score_paths:
        os.environ["SDTP_SCORE_PATH"] = path
        check_score(dev, g, path)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"{len(failures)} failed", flush=True)
    return 1 if failures else 0


def check_score(dev, g, path):
    for dtype, T, D, H in ((torch.bfloat16, 300, 136, 300), (torch.float16, 70, 37, 5), (torch.float32, 70, 40, 130),
                           (torch.bfloat16, 129, 64, 128)):
        hidden = (torch.randn(T, D, generator=g) * 3).to(dtype)
        nw = 1 + 0.1 * torch.randn(D, generator=g)
        w1 = torch.randn(H, D, generator=g) / D**0.5
        b1 = 0.1 * torch.randn(H, generator=g)
        w2 = torch.randn(H, generator=g) / H**0.5
        b2 = torch.tensor(0.25)
        args = [t.to(dtype) for t in (nw, w1, b1, w2, b2)]
        want = sdtp_kernels.saliency_score(hidden.float(), *[a.float() for a in args])
        got = sdtp_kernels.saliency_score(hidden.to(dev), *[a.to(dev) for a in args]).cpu()
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        err = (got - want).abs().max().item()
        check(f"saliency_score {path} {dtype} T={T} D={D} H={H} (max abs err {err:.2e})",
              err <= tol * (1 + want.abs().max().item()))
    # hidden whose base is not 16-byte aligned (a contiguous view): the zero-padded copy path
    T, D, H = 40, 64, 20
    flat = (torch.randn(T * D + 1, generator=g) * 3).bfloat16()
    params = [(1 + 0.1 * torch.randn(D, generator=g)).bfloat16(), (torch.randn(H, D, generator=g) / 8).bfloat16(),
              torch.zeros(H).bfloat16(), (torch.randn(H, generator=g) / 4).bfloat16(), torch.tensor(0.5)]
    want = sdtp_kernels.saliency_score(flat[1:].view(T, D).float(), *[p.float() for p in params])
    got = sdtp_kernels.saliency_score(flat.to(dev)[1:].view(T, D), *[p.to(dev) for p in params]).cpu()
    err = (got - want).abs().max().item()
    check(f"saliency_score {path} bf16 misaligned base (max abs err {err:.2e})",
          err <= 5e-2 * (1 + want.abs().max().item()))


if __name__ == "__main__":
    sys.exit(main())
