"""compact / compact_varlen equal python_ref exactly for every layout the integration moves."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import python_ref
import sdtp_kernels


def random_index(B, N, K, generator, holes=True):
    """Right-aligned ascending rows like select_tokens produces, with -1 on the left."""
    index = torch.full((B, K), -1, dtype=torch.int64)
    for b in range(B):
        c = int(torch.randint(0 if holes else K, K + 1, (1,), generator=generator)) if N >= K else 0
        if c:
            index[b, K - c:] = torch.randperm(N, generator=generator)[:c].sort().values
    return index


LAYOUTS = [  # (shape, dim): hidden states, position ids, rotary cos/sin, K/V cache, attention mask
    ((3, 17, 32), 1),
    ((3, 17), 1),
    ((3, 17, 8), 1),
    ((3, 4, 17, 8), 2),
    ((3, 4, 17, 8), -2),
]


@pytest.mark.parametrize("shape,dim", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_compact_matches_reference(shape, dim, dtype, device):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 10).to(dtype)
    index = random_index(shape[0], shape[dim], 9, g)
    got = sdtp_kernels.compact(x.to(device), index.to(device), dim)
    assert torch.equal(got.cpu(), python_ref.compact(x, index, dim))


def test_compact_non_contiguous(device):
    x = torch.randn(17, 3, 24).transpose(0, 1)  # [3, 17, 24], not contiguous
    index = random_index(3, 17, 5, torch.Generator().manual_seed(1))
    got = sdtp_kernels.compact(x.to(device), index.t().contiguous().t().to(device))
    assert torch.equal(got.cpu(), python_ref.compact(x, index))


@pytest.mark.parametrize("shape,K", [((0, 5, 4), 0), ((2, 5, 4), 0), ((2, 1, 4), 1), ((2, 5, 0), 3), ((2, 0, 4), 3)])
def test_compact_empty_and_tiny(shape, K, device):
    x = torch.randn(shape)
    index = random_index(shape[0], shape[1], K, torch.Generator().manual_seed(2))
    got = sdtp_kernels.compact(x.to(device), index.to(device))
    assert got.shape == python_ref.compact(x, index).shape
    assert torch.equal(got.cpu(), python_ref.compact(x, index))


@pytest.mark.parametrize("shape", [(3, 17, 32), (3, 17), (4, 9, 2, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_compact_varlen_matches_reference(shape, dtype, device):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g) * 10).to(dtype)
    index = random_index(shape[0], shape[1], 6, g)
    index[0] = -1  # a row that keeps nothing
    packed, cu, max_len = sdtp_kernels.compact_varlen(x.to(device), index.to(device))
    ref = python_ref.compact_varlen(x, index)
    assert torch.equal(packed.cpu(), ref[0]) and torch.equal(cu.cpu(), ref[1]) and max_len == ref[2]
    assert cu.dtype == torch.int32 and cu.device == packed.device


def test_compact_varlen_writes_every_row(device):
    """Any index the contract allows (-1 anywhere in a row, repeated positions, a row that keeps nothing) packs
    every row: on CUDA the memory the allocator hands out next is first filled with NaN, so a skipped row shows."""
    g = torch.Generator().manual_seed(4)
    B, N, K, D = 4, 40, 24, 16
    x = torch.randn(B, N, D, generator=g)
    index = torch.randint(-1, N, (B, K), generator=g)
    index[1] = -1
    ref = python_ref.compact_varlen(x, index)
    if device.type == "cuda":
        torch.full(ref[0].shape, float("nan"), device=device)  # freed at once, back in the allocator's cache
    packed, cu, max_len = sdtp_kernels.compact_varlen(x.to(device), index.to(device))
    assert not packed.isnan().any()
    assert torch.equal(packed.cpu(), ref[0]) and torch.equal(cu.cpu(), ref[1]) and max_len == ref[2]


def test_compact_varlen_empty_batch(device):
    packed, cu, max_len = sdtp_kernels.compact_varlen(torch.empty(0, 4, 3, device=device),
                                                      torch.empty(0, 2, dtype=torch.int64, device=device))
    assert packed.shape == (0, 3) and cu.tolist() == [0] and max_len == 0


@pytest.mark.parametrize("shape,dim", LAYOUTS)
def test_compact_gradient_matches_reference(shape, dim, device):
    """A gather is differentiable in x: each output row's gradient goes back to the row of x it came from (a pruned
    forward run with gradients on keeps its graph); repeated positions add up, -1 entries give nothing."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    index = random_index(shape[0], shape[dim], 9, g)
    index[1, -2:] = index[1, -1]  # a position taken twice
    grad_out = torch.randn(python_ref.compact(x, index, dim).shape, generator=g, dtype=torch.float64)
    got = x.to(device, copy=True).requires_grad_()
    sdtp_kernels.compact(got, index.to(device), dim).backward(grad_out.to(device))
    want = x.clone().requires_grad_()
    python_ref.compact(want, index, dim).backward(grad_out)
    torch.testing.assert_close(got.grad.cpu(), want.grad)
    x, index = x[:2].to(device).requires_grad_(), index[:2].to(device)
    torch.autograd.gradcheck(lambda t: sdtp_kernels.compact(t, index, dim), x)


def test_compact_varlen_gradient_matches_reference(device):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 11, 4, generator=g, dtype=torch.float64)
    index = random_index(3, 11, 7, g)
    index[0] = -1
    index[2, -2:] = index[2, -1]
    grad_out = torch.randn(python_ref.compact_varlen(x, index)[0].shape, generator=g, dtype=torch.float64)
    got = x.to(device, copy=True).requires_grad_()
    packed, cu, max_len = sdtp_kernels.compact_varlen(got, index.to(device))
    assert not cu.requires_grad and isinstance(max_len, int)
    packed.backward(grad_out.to(device))
    want = x.clone().requires_grad_()
    python_ref.compact_varlen(want, index)[0].backward(grad_out)
    torch.testing.assert_close(got.grad.cpu(), want.grad)
    x, index = x.to(device).requires_grad_(), index.to(device)
    torch.autograd.gradcheck(lambda t: sdtp_kernels.compact_varlen(t, index)[0], x)


def any_index(B, N, K, generator):
    """Any index the contract allows: -1 anywhere (at least one), positions in any order and taken several times."""
    index = torch.randint(-1, N, (B, K), generator=generator)
    index[0, 0] = -1
    return index


@pytest.mark.parametrize("shape,dim", LAYOUTS + [((3, 17), -1), ((2, 3, 2, 17, 4), 3), ((3, 4, 5, 17), -1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compact_gradient_any_index(shape, dim, dtype, device):
    """x's gradient is the reference gather's, with x's dtype, device and sizes, for any index and an output gradient
    that is not contiguous. Small integers add up exactly in any order, so the two must be equal."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g).to(dtype)
    index = any_index(shape[0], shape[dim], 2 * shape[dim], g)  # more entries than positions: some repeat
    out_shape = python_ref.compact(x, index, dim).shape
    grad_out = torch.randint(-8, 9, out_shape[::-1], generator=g).to(dtype).permute(*reversed(range(len(shape))))
    got = x.to(device, copy=True).requires_grad_()
    sdtp_kernels.compact(got, index.to(device), dim).backward(grad_out.to(device))
    want = x.clone().requires_grad_()
    python_ref.compact(want, index, dim).backward(grad_out)
    assert got.grad.dtype == dtype and got.grad.device == got.device and got.grad.shape == shape
    assert torch.equal(got.grad.cpu(), want.grad)


@pytest.mark.parametrize("shape", [(3, 17), (4, 9, 2, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compact_varlen_gradient_any_index(shape, dtype, device):
    """As for compact, with a row that keeps nothing."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(shape, generator=g).to(dtype)
    index = any_index(shape[0], shape[1], 2 * shape[1], g)
    index[1] = -1
    grad_out = torch.randint(-8, 9, python_ref.compact_varlen(x, index)[0].shape, generator=g).to(dtype)
    got = x.to(device, copy=True).requires_grad_()
    sdtp_kernels.compact_varlen(got, index.to(device))[0].backward(grad_out.to(device))
    want = x.clone().requires_grad_()
    python_ref.compact_varlen(want, index)[0].backward(grad_out)
    assert got.grad.dtype == dtype and got.grad.device == got.device and got.grad.shape == shape
    assert torch.equal(got.grad.cpu(), want.grad)


def test_gradients_twice_differentiable():
    index = torch.tensor([[-1, 0, 4, 4], [2, 3, -1, 1]])
    x = torch.randn(2, 3, 5, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda t: sdtp_kernels.compact(t, index, 2), x)
    torch.autograd.gradgradcheck(lambda t: sdtp_kernels.compact_varlen(t, index)[0], x[:, 0])


class Storages(TorchDispatchMode):
    """Every storage that the ops run under it return, new or an input's (views, in-place ops), kept alive so that no
    address is reused."""

    def __init__(self):
        super().__init__()
        self.storages = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage())
        return out


@pytest.mark.parametrize("op,shape,dim", [("compact", (3, 4, 17, 64), 2), ("compact", (3, 17, 64), -2),
                                          ("compact_varlen", (3, 17, 64), 1)])
def test_gradient_memory(op, shape, dim, device):
    """The backward allocates x's gradient and index-sized row numbers, nothing the size of the output's gradient (an
    expanded index, a mask and a masked copy of it: 3.25 times its bytes in float32 before)."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(shape, generator=g).to(device).requires_grad_()
    index = any_index(shape[0], shape[dim], 9, g).to(device)
    out = sdtp_kernels.compact(x, index, dim) if op == "compact" else sdtp_kernels.compact_varlen(x, index)[0]
    grad_out = torch.randn_like(out)
    with Storages() as mode:
        (grad,) = torch.autograd.grad(out, x, grad_out)
    known = {t.untyped_storage().data_ptr() for t in (index, grad_out, grad)}
    temporaries = sum(s.nbytes() for ptr, s in mode.storages.items() if ptr not in known)
    limit = grad_out.nbytes // 4
    assert 0 < temporaries < limit


@settings(max_examples=150, deadline=None)
@given(
    B=st.integers(0, 4), N=st.integers(1, 30), K=st.integers(0, 30), D=st.integers(0, 9),
    heads=st.integers(1, 3), kv=st.booleans(), seed=st.integers(0, 2**31),
)
def test_property_compact(B, N, K, D, heads, kv, seed):
    g = torch.Generator().manual_seed(seed)
    K = min(K, N)
    x = torch.randn((B, heads, N, D) if kv else (B, N, D), generator=g)
    index = random_index(B, N, K, g)
    dim = 2 if kv else 1
    assert torch.equal(sdtp_kernels.compact(x, index, dim), python_ref.compact(x, index, dim))
    if not kv:
        got, ref = sdtp_kernels.compact_varlen(x, index), python_ref.compact_varlen(x, index)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and got[2] == ref[2]
