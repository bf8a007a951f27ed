"""The CUDA ops in the modes and at the sizes only a GPU exercises, against the CPU op (itself checked against
python_ref): over 65,535 rows, ties across chunk boundaries, device keep/num_local with an integer mask, 64-bit
offsets, a second stream, CUDA graph capture, and the same call twice giving the same bits."""
import pytest
import torch

import python_ref
import sdtp_kernels
from conftest import CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]


def select_both(scores, keep, valid=None, num_sink=4, num_local=0, width=None):
    """(CUDA result, CPU result) of the same call; tensors are moved to each device."""
    def on(device):
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        index, counts = sdtp_kernels.select_tokens(move(scores), move(keep), move(valid), num_sink, move(num_local),
                                                   width=width)
        return index.cpu(), counts.cpu()
    return on("cuda"), on("cpu")


def test_select_over_65535_rows_with_integer_mask_and_device_counts():
    g = torch.Generator().manual_seed(0)
    B, N = 70_000, 24
    scores = torch.randn(B, N, generator=g).to(torch.bfloat16)
    valid = torch.randint(0, 4, (B, N), generator=g)  # an integer mask: every non-zero value is valid
    keep = torch.randint(0, N + 1, (B,), generator=g)
    num_local = torch.randint(0, 5, (B,), generator=g)
    got, want = select_both(scores, keep, valid, 2, num_local, width=N)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("B,N", [(1, 300_000), (3, 70_001)])
def test_select_ties_across_chunk_boundaries(B, N):
    g = torch.Generator().manual_seed(1)
    scores = torch.full((B, N), 0.5)
    others = torch.rand(B, N, generator=g) < 0.1  # 90% of the scores are equal
    scores[others] = torch.randn(int(others.sum()), generator=g)
    got, want = select_both(scores, N // 3, num_sink=4, num_local=N // 10)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_each_op_twice_gives_the_same_bits():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5000, 64, generator=g).cuda()
    scores = torch.randn(4, 5000, generator=g).cuda()
    w = [torch.randn(64, generator=g), torch.randn(32, 64, generator=g) / 8, torch.randn(32, generator=g),
         torch.randn(32, generator=g), torch.tensor(0.1)]
    w = [t.cuda() for t in w]
    calls = {
        "select": lambda: sdtp_kernels.select_tokens(scores, 1200, num_local=torch.tensor(50, device="cuda"),
                                                     width=1300),
        "compact": lambda: sdtp_kernels.compact(x, sdtp_kernels.select_tokens(scores, 1200)[0]),
        "compact_varlen": lambda: sdtp_kernels.compact_varlen(x, sdtp_kernels.select_tokens(scores, 1200)[0]),
        "score": lambda: sdtp_kernels.saliency_score(x.bfloat16(), *w),
    }
    for name, call in calls.items():
        first, second = call(), call()
        first = first if isinstance(first, tuple) else (first,)
        second = second if isinstance(second, tuple) else (second,)
        for a, b in zip(first, second):
            assert (a == b) if not isinstance(a, torch.Tensor) else torch.equal(a, b), name


def test_ops_on_a_side_stream_equal_the_default_stream():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3000, 32, generator=g).cuda()
    scores = torch.randn(2, 3000, generator=g).cuda()
    keep = torch.tensor([1000, 2000], device="cuda")

    def pipeline():
        index, _ = sdtp_kernels.select_tokens(scores, keep, num_local=torch.tensor(16, device="cuda"), width=2100)
        return sdtp_kernels.compact(x, index), sdtp_kernels.compact_varlen(x, index)[0]

    expected = pipeline()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = pipeline()
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_select_with_width_and_compact_capture_in_a_cuda_graph():
    """The integration's calls (mask, device keep/num_local, width) capture: no host read happens under capture."""
    g = torch.Generator().manual_seed(4)
    B, N, D = 2, 4096, 64
    scores = torch.randn(B, N, generator=g).cuda()
    x = torch.randn(B, N, D, generator=g).cuda()
    valid = torch.ones(B, N, dtype=torch.bool, device="cuda")
    keep = torch.tensor([1000, 2000], device="cuda")
    num_local = torch.tensor(64, device="cuda")

    def step():
        index, _ = sdtp_kernels.select_tokens(scores, keep, valid=valid, num_sink=4, num_local=num_local, width=2048)
        return sdtp_kernels.compact(x, index)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture, as CUDA graphs require
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    scores.copy_(torch.randn(B, N, generator=g).cuda())
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, step())


def test_check_false_reads_nothing_back_and_changes_nothing():
    """The integration's calls with check=False: the same results, and no synchronising copy (CUDA's sync debug
    mode raises on one); with the checks on, the same calls read back once each."""
    g = torch.Generator().manual_seed(5)
    B, N, D = 3, 5000, 32
    scores = torch.randn(B, N, generator=g).cuda()
    x = torch.randn(B, N, D, generator=g).cuda()
    valid = torch.ones(B, N, dtype=torch.bool, device="cuda")
    valid[0, :100] = False
    keep = torch.tensor([1000, 2000, 3000], device="cuda")
    num_local = torch.tensor(64, device="cuda")

    def step(check):
        index, counts = sdtp_kernels.select_tokens(scores, keep, valid=valid, num_sink=4, num_local=num_local,
                                                   width=3000, check=check)
        return index, counts, sdtp_kernels.compact(x, index, check=check)

    checked = step(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        unchecked = step(False)
        with pytest.raises(RuntimeError, match="synchroniz"):
            step(True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked))


def test_select_without_width_under_capture_says_width_is_needed():
    scores = torch.randn(2, 64, device="cuda")
    keep = torch.tensor([10, 20], device="cuda")
    sdtp_kernels.select_tokens(scores, keep, width=20)  # loads the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="'width'"):
        with torch.cuda.graph(graph):
            sdtp_kernels.select_tokens(scores, keep)


def test_host_row_counts_are_copied_without_waiting_and_refused_under_capture():
    """[B] keep / num_local on the CPU: copied to the device without a synchronising copy (the sync debug mode raises
    on one), the same result as given on the device; under graph capture, which cannot capture a copy from the host,
    a ValueError names the argument."""
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(3, 500, generator=g).cuda()
    keep, num_local = torch.tensor([100, 200, 300]), torch.tensor([8, 0, 16])
    expected = sdtp_kernels.select_tokens(scores, keep.cuda(), num_local=num_local.cuda(), width=300)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = sdtp_kernels.select_tokens(scores, keep, num_local=num_local, width=300)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    for name, kwargs in (("'keep'", dict(keep=keep, num_local=8)),
                         ("'num_local'", dict(keep=100, num_local=num_local))):
        with pytest.raises(ValueError, match=name):
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                sdtp_kernels.select_tokens(scores, width=300, **kwargs)


@pytest.mark.parametrize("path", ["fused", "gemm"])
def test_score_with_a_python_float_b2_captures_in_a_cuda_graph(path, monkeypatch):
    """A Python-float b2 is filled on the device, not copied from the host, so the call can be captured."""
    monkeypatch.setenv("SDTP_SCORE_PATH", path)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 64, generator=g).cuda().to(torch.bfloat16)
    weights = [t.cuda() for t in (torch.ones(64), torch.randn(32, 64, generator=g) / 8, torch.zeros(32),
                                  torch.randn(32, generator=g) / 4)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sdtp_kernels.saliency_score(x, *weights, 0.25)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = sdtp_kernels.saliency_score(x, *weights, 0.25)
    x.copy_(torch.randn(300, 64, generator=g).cuda().to(torch.bfloat16))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, sdtp_kernels.saliency_score(x, *weights, 0.25))


@pytest.mark.slow
def test_compact_beyond_4_gib():
    B, N, D = 2, 300_000, 2048  # float32: 4.6 GiB in and out, so byte offsets pass 2^32
    x = torch.randn(B, N, D, device="cuda")
    index = torch.arange(N, device="cuda").flip(0).expand(B, N).contiguous()
    index[:, :7] = -1
    got = sdtp_kernels.compact(x, index)
    assert torch.equal(got, python_ref.compact(x, index))


@pytest.mark.slow
def test_score_with_more_than_2_31_elements():
    T, D, H = 540_000, 4096, 64  # T * D = 2.2e9 > 2^31
    g = torch.Generator(device="cuda").manual_seed(5)
    hidden = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, generator=g)
    weights = [torch.ones(D), torch.randn(H, D) / 64, torch.zeros(H), torch.randn(H) / 8, torch.tensor(0.0)]
    weights = [t.cuda() for t in weights]
    full = sdtp_kernels.saliency_score(hidden, *weights)
    tail = hidden[-64:]  # rows past element 2^31: the same as the op on those rows alone, within the tolerance
    ref = python_ref.saliency_score(tail.double(), *weights, compute_dtype=torch.float64)  # returned as float32
    torch.testing.assert_close(full[-64:], ref, rtol=2e-2, atol=2e-2)


def test_select_reads_host_keep_as_it_was_at_the_call():
    """A pinned host keep refilled right after the call, while the stream is still busy: the op stages its own copy,
    so the kernel sees the values of the call, not the refill."""
    g = torch.Generator().manual_seed(5)
    B, N = 4, 2048
    scores = torch.randn(B, N, generator=g).cuda()
    keep = torch.tensor([100, 200, 300, 400]).pin_memory()
    want = sdtp_kernels.select_tokens(scores.cpu(), keep.clone(), num_sink=4, width=N)
    torch.cuda._sleep(200_000_000)  # a busy stream: the host-to-device copy runs after the refill below
    got = sdtp_kernels.select_tokens(scores, keep, num_sink=4, width=N)
    keep.fill_(N)
    torch.cuda.synchronize()
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
