"""select_tokens: the kernel equals python_ref exactly, and python_ref equals a row-by-row reading of
docs/ARCHITECTURE.md §3.2."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import python_ref
import sdtp_kernels
from conftest import CUDA

SPECIAL = [float("nan"), 0.0, -0.0, float("inf"), float("-inf"), 1.0, -1.0, 0.5]


def spelled_out(scores, keep, valid, num_sink, num_local):
    """docs/ARCHITECTURE.md §3.2 read literally, one row at a time, with Python's sort."""
    B, N = scores.shape
    rows, counts = [], []
    for b in range(B):
        V = [i for i in range(N) if valid is None or bool(valid[b, i])]
        L = len(V)
        keep_b = int(keep[b]) if isinstance(keep, torch.Tensor) and keep.dim() else int(keep)
        local_b = int(num_local[b]) if isinstance(num_local, torch.Tensor) and num_local.dim() else int(num_local)
        P = set(V[: min(num_sink, L)]) | set(V[L - min(local_b, L):])
        c = max(min(keep_b, L), len(P))
        rest = [i for i in V if i not in P]
        s = scores[b].double().tolist()
        rest.sort(key=lambda i: (math.isnan(s[i]), 0.0 if math.isnan(s[i]) else -s[i], i))
        rows.append(sorted(P | set(rest[: c - len(P)])))
        counts.append(c)
    K = max(counts, default=0)
    index = torch.full((B, K), -1, dtype=torch.int64)
    for b, kept in enumerate(rows):
        if kept:
            index[b, K - len(kept):] = torch.tensor(kept)
    return index, torch.tensor(counts, dtype=torch.int64)


def check(scores, keep, valid=None, num_sink=4, num_local=0, device="cpu"):
    expected = spelled_out(scores, keep, valid, num_sink, num_local)
    ref = python_ref.select_tokens(scores, keep, valid, num_sink, num_local)
    assert torch.equal(ref[0], expected[0]) and torch.equal(ref[1], expected[1])
    move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    got = sdtp_kernels.select_tokens(move(scores), move(keep), move(valid), num_sink, move(num_local))
    assert torch.equal(got[0].cpu(), expected[0]), (got[0], expected[0])
    assert torch.equal(got[1].cpu(), expected[1])


def test_fixed_case(device):
    scores = torch.tensor([[0.1, 5.0, -1.0, 3.0, 3.0, float("nan"), 2.0, 0.0, -0.0, 4.0]])
    index, counts = sdtp_kernels.select_tokens(scores.to(device), keep=5, num_sink=1, num_local=1)
    assert index.tolist() == [[0, 1, 3, 4, 9]] and counts.tolist() == [5]


def test_subnormal_scores_rank_by_value_with_denormals_flushed():
    """Kernel and reference rank by an integer key of the bits: float compares would fold subnormals into zero
    under torch.set_flush_denormal(True), as they would under nvcc's -ftz."""
    scores = torch.tensor([[0.0, -1e-45, 1e-45, 0.0, 2e-45]])
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert sdtp_kernels.select_tokens(scores, 2, num_sink=0)[0].tolist() == [[2, 4]]
        assert python_ref.select_tokens(scores, 2, num_sink=0)[0].tolist() == [[2, 4]]
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize(
    "case",
    [
        dict(N=1, keep=1),
        dict(N=1, keep=0, num_sink=0),
        dict(N=16, keep=100),  # keep >= L
        dict(N=16, keep=2, num_sink=4, num_local=3),  # keep below the protected count
        dict(N=6, keep=3, num_sink=4, num_local=4),  # sink + local >= L
        dict(N=8, keep=0, num_sink=0, num_local=0),
        dict(N=32, keep=10, equal=True),  # all-equal rows: lowest positions win
    ],
)
def test_edge_cases(case, device):
    torch.manual_seed(0)
    N = case["N"]
    scores = torch.zeros(3, N) if case.get("equal") else torch.randn(3, N)
    check(scores, case["keep"], None, case.get("num_sink", 4), case.get("num_local", 0), device)


def test_padding_left_right_and_empty_rows(device):
    torch.manual_seed(1)
    scores = torch.randn(4, 12)
    valid = torch.ones(4, 12, dtype=torch.bool)
    valid[0, :5] = False  # left padding
    valid[1, 7:] = False  # right padding
    valid[2] = False  # all padding
    check(scores, 4, valid, 2, 1, device)
    check(scores, 4, valid.long(), 2, 1, device)  # integer attention mask


def test_empty_batch(device):
    index, counts = sdtp_kernels.select_tokens(torch.empty(0, 7, device=device), 3)
    assert index.shape == (0, 0) and counts.shape == (0,)


def test_per_row_keep_and_local(device):
    torch.manual_seed(2)
    scores = torch.randn(3, 40)
    check(scores, torch.tensor([0, 10, 40]), None, 2, torch.tensor([0, 3, 50]), device)


def test_width_pads_on_the_left(device):
    scores = torch.arange(10.0).unsqueeze(0).to(device)
    index, counts = sdtp_kernels.select_tokens(scores, 3, num_sink=0, width=5)
    assert index.tolist() == [[-1, -1, 7, 8, 9]] and counts.tolist() == [3]


def test_non_contiguous_scores(device):
    torch.manual_seed(3)
    scores = torch.randn(33, 5).t()
    assert not scores.is_contiguous()
    check(scores, 7, None, 1, 2, device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores(dtype, device):
    torch.manual_seed(4)
    scores = torch.randn(2, 64).to(dtype)  # many exact ties after rounding
    check(scores, 20, None, 4, 4, device)


def test_large_row_matches_reference(device):
    torch.manual_seed(5)
    scores = torch.randn(2, 50_000)
    scores[:, ::7] = scores[:, 1:2]  # heavy ties
    got = sdtp_kernels.select_tokens(scores.to(device), 30_000, None, 4, 100)
    ref = python_ref.select_tokens(scores, 30_000, None, 4, 100)
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])


@st.composite
def select_inputs(draw):
    B = draw(st.integers(0, 4))
    N = draw(st.integers(1, 40))
    values = st.one_of(st.sampled_from(SPECIAL), st.floats(-3, 3, width=32))
    scores = torch.tensor(draw(st.lists(values, min_size=B * N, max_size=B * N)), dtype=torch.float32).view(B, N)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    valid = None
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(0, N), min_size=B, max_size=B))
        left = draw(st.booleans())
        pos = torch.arange(N)
        valid = torch.stack([(pos >= N - n) if left else (pos < n) for n in lengths]) if B else torch.ones(0, N).bool()
        if draw(st.booleans()):
            valid = valid.long()
    per_row = st.lists(st.integers(0, N + 2), min_size=B, max_size=B).map(lambda v: torch.tensor(v, dtype=torch.int64))
    keep = draw(st.one_of(st.integers(0, N + 2), per_row))
    num_local = draw(st.one_of(st.integers(0, N + 2), per_row))
    return scores.to(dtype), keep, valid, draw(st.integers(0, 6)), num_local


@settings(max_examples=300, deadline=None)
@given(select_inputs())
def test_property_matches_spelled_out_reference(args):
    check(*args)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@settings(max_examples=100, deadline=None)
@given(select_inputs())
def test_property_cuda_matches_cpu_bitwise(args):
    check(*args, device="cuda")
