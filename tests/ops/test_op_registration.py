"""The ops are proper torch custom ops: opcheck (schema, fake tensors, dispatch) and torch.compile(fullgraph)."""
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import sdtp_kernels


def sample_args(device):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 12, 16, generator=g)
    score = (hidden, torch.ones(16), torch.randn(8, 16, generator=g), torch.zeros(8), torch.randn(8, generator=g),
             torch.tensor(0.1))
    scores = torch.randn(2, 12, generator=g)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :3] = False
    keep = torch.tensor([6, 5])
    index = torch.tensor([[-1, 0, 4, 7], [2, 3, 5, 11]])
    kv_cache = torch.randn(2, 3, 12, 4, generator=g)  # [B, heads, N, head_dim]
    to = lambda args: tuple(a.to(device) for a in args)  # noqa: E731
    return {
        "saliency_score": [to(score)],
        "select_tokens": [
            (scores.to(device), keep, valid.to(device), 2, torch.tensor(1), None),
            (scores.to(device), keep, None, 0, torch.tensor([0, 2]), 9),
        ],
        "compact": [(hidden.to(device), index.to(device), 1), (kv_cache.to(device), index.to(device), 2)],
        "compact_varlen": [to((hidden, index))],
    }


@pytest.mark.parametrize("op", ["saliency_score", "select_tokens", "compact", "compact_varlen"])
def test_opcheck(op, device):
    for args in sample_args(device)[op]:
        torch.library.opcheck(getattr(torch.ops.sdtp, op).default, args)


def test_opcheck_with_check_false(device):
    """The keyword-only `check` flag (docs/ARCHITECTURE.md §3.4) goes through the schema, the fakes and dispatch."""
    samples = sample_args(device)
    scores, keep, valid, num_sink, num_local, _ = samples["select_tokens"][0]
    masked = (scores, keep.to(device), valid, num_sink, num_local.to(device), 12)  # the integration's kind of call
    for args in (samples["select_tokens"][1], masked):
        torch.library.opcheck(torch.ops.sdtp.select_tokens.default, args, {"check": False})
    for args in samples["compact"]:
        torch.library.opcheck(torch.ops.sdtp.compact.default, args, {"check": False})


def test_opcheck_with_gradients(device):
    """compact and compact_varlen are differentiable in x: opcheck then also checks the autograd registration and
    the backward under AOT dispatch."""
    samples = sample_args(device)
    for op in ("compact", "compact_varlen"):
        for x, *rest in samples[op]:
            torch.library.opcheck(getattr(torch.ops.sdtp, op).default, (x.double().requires_grad_(), *rest))


def test_torch_compile_backward():
    def gather(hidden, index):
        packed, _, max_seqlen = sdtp_kernels.compact_varlen(hidden, index)
        return sdtp_kernels.compact(hidden, index).sum() + packed.square().sum() * max_seqlen

    hidden = sample_args("cpu")["compact_varlen"][0][0].requires_grad_()
    index = sample_args("cpu")["compact_varlen"][0][1]
    compiled = torch.compile(gather, fullgraph=True, backend="aot_eager")
    (want,) = torch.autograd.grad(gather(hidden, index), hidden)
    (got,) = torch.autograd.grad(compiled(hidden, index), hidden)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("op", ["compact", "compact_varlen"])
def test_torch_compile_backward_dynamic_shapes(op):
    """The backward keeps sizes symbolic: under dynamic=True another shape (every dim and K new) reuses the graph."""
    fn = {"compact": lambda x, index: sdtp_kernels.compact(x, index, -2),
          "compact_varlen": lambda x, index: sdtp_kernels.compact_varlen(x, index)[0]}[op]
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
    g = torch.Generator().manual_seed(1)
    for B, heads, N, D, K in [(3, 2, 7, 6, 4), (4, 3, 9, 10, 5)]:
        x = torch.randn((B, heads, N, D) if op == "compact" else (B, N, D), generator=g, requires_grad=True)
        index = torch.randint(-1, N, (B, K), generator=g)
        grad_out = torch.randn(fn(x, index).shape, generator=g)
        (got,) = torch.autograd.grad(compiled(x, index), x, grad_out)
        (want,) = torch.autograd.grad(fn(x, index), x, grad_out)
        torch.testing.assert_close(got, want)
    assert counter.frame_count == 1


def test_torch_compile_fullgraph():
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    torch._dynamo.config.capture_scalar_outputs = True

    def prune(hidden, norm_weight, w1, b1, w2, b2, valid):
        scores = sdtp_kernels.saliency_score(hidden, norm_weight, w1, b1, w2, b2)
        index, counts = sdtp_kernels.select_tokens(scores, 6, valid, 2, 1, width=8)
        kept = sdtp_kernels.compact(hidden, index)
        packed, cu_seqlens, max_seqlen = sdtp_kernels.compact_varlen(hidden, index)
        return kept, counts, packed, cu_seqlens

    args = sample_args("cpu")["saliency_score"][0] + (torch.ones(2, 12, dtype=torch.bool),)
    compiled = torch.compile(prune, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), prune(*args)):
        assert torch.equal(got, want)


def test_torch_compile_two_stages_with_data_dependent_widths():
    """The second stage selects from scores whose width the first select_tokens decided: the fakes check what the
    trace knows and leave sizes that depend on data to the kernels, instead of stopping the trace."""
    def two_stages(scores, valid):
        index, _ = sdtp_kernels.select_tokens(scores, 6, valid, 1, 1)
        kept = sdtp_kernels.compact(scores.unsqueeze(-1), index).squeeze(-1)
        kept_valid = sdtp_kernels.compact(valid.unsqueeze(-1).float(), index).squeeze(-1) > 0
        return sdtp_kernels.select_tokens(kept, 3, kept_valid, 1, 1)[0]

    scores, valid = torch.randn(2, 12, generator=torch.Generator().manual_seed(2)), torch.ones(2, 12, dtype=torch.bool)
    valid[0, :4] = False
    compiled = torch.compile(two_stages, fullgraph=True, dynamic=True, backend="aot_eager")
    assert torch.equal(compiled(scores, valid), two_stages(scores, valid))


def test_torch_compile_fullgraph_makes_the_first_op_call():
    # A fresh process whose first op call is inside a compiled function: dynamo cannot trace loading the extension.
    code = textwrap.dedent("""
        import torch
        import sdtp_kernels
        top2 = lambda x: sdtp_kernels.select_tokens(x, 2, num_sink=0, num_local=0)[0]
        compiled = torch.compile(top2, fullgraph=True, backend="eager")
        assert compiled(torch.arange(8.0).view(2, 4)).tolist() == [[2, 3], [2, 3]]
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_info():
    info = sdtp_kernels.build_info()
    assert {"version", "torch", "cpu", "cuda_compiled", "cuda_archs", "cuda_available"} <= info.keys()
    assert info["cpu"] is True and info["version"] == sdtp_kernels.__version__


def test_every_op_has_its_kernels_registered():
    """Each backend registers its kernels when the extension loads: CPU always, CUDA in a build with the CUDA
    kernels (checked without a device, so that a registration lost from a CUDA source shows on a CPU machine), the
    backward where the op has one, Meta through the fakes."""
    backward = {"saliency_score", "compact", "compact_varlen"}  # saliency_score's refuses inputs that need grad
    cuda = ["CUDA"] if sdtp_kernels.build_info()["cuda_compiled"] else []
    for op in ("saliency_score", "select_tokens", "compact", "compact_varlen"):
        keys = ["CPU", "Meta", *cuda, *(["Autograd"] if op in backward else [])]
        missing = [key for key in keys if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sdtp::{op}", key)]
        assert not missing, f"sdtp::{op} has no kernel for {missing}"
