"""saliency_score meets docs/ARCHITECTURE.md §3.1: against an fp64 reference its error is within 2x the error of
the same computation done unfused in PyTorch in the input dtype."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import python_ref
import sdtp_kernels


def make_inputs(tokens_shape, D, H, dtype, seed=0, weight_dtype=None):
    g = torch.Generator().manual_seed(seed)
    weight_dtype = weight_dtype or dtype
    hidden = (torch.randn(*tokens_shape, D, generator=g) * 3).to(dtype)
    norm_weight = (1 + 0.1 * torch.randn(D, generator=g)).to(weight_dtype)
    w1 = (torch.randn(H, D, generator=g) / D**0.5).to(weight_dtype)
    b1 = (0.1 * torch.randn(H, generator=g)).to(weight_dtype)
    w2 = (torch.randn(H, generator=g) / H**0.5).to(weight_dtype)
    b2 = torch.tensor(0.25).to(weight_dtype)
    return hidden, norm_weight, w1, b1, w2, b2


def assert_within_tolerance(inputs, device):
    exact = python_ref.saliency_score(*inputs, compute_dtype=torch.float64)
    plain = python_ref.saliency_score(*inputs, compute_dtype=inputs[0].dtype)
    got = sdtp_kernels.saliency_score(*(t.to(device) for t in inputs)).cpu()
    assert got.dtype == torch.float32 and got.shape == inputs[0].shape[:-1]
    if got.numel() == 0:
        return
    err = (got.double() - exact).abs().max().item()
    allowed = 2 * (plain.double() - exact).abs().max().item()
    # A few float32 roundings of the result (the w2 dot and b2 can cancel) no float32 computation avoids
    floor = 16 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    assert err <= max(allowed, floor), (err, allowed, floor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D,H", [(64, 16), (100, 1), (37, 2048), (256, 200), (8, 3)])
def test_tolerance_rule(dtype, D, H, device):
    assert_within_tolerance(make_inputs((2, 33), D, H, dtype), device)


def test_float32_weights_with_half_hidden(device):
    assert_within_tolerance(make_inputs((50,), 96, 24, torch.bfloat16, weight_dtype=torch.float32), device)


@pytest.mark.parametrize("tokens_shape", [(0,), (3, 0), (1,), (2, 3, 5)])
def test_token_shapes(tokens_shape, device):
    assert_within_tolerance(make_inputs(tokens_shape, 40, 12, torch.float32), device)


def test_non_contiguous_hidden_and_python_float_b2(device):
    hidden, nw, w1, b1, w2, _ = make_inputs((9, 4), 48, 10, torch.float32)
    hidden = hidden.transpose(0, 1)  # [4, 9, 48], not contiguous
    got = sdtp_kernels.saliency_score(*(t.to(device) for t in (hidden, nw, w1, b1, w2)), 0.25)
    ref = python_ref.saliency_score(hidden, nw, w1, b1, w2, torch.tensor(0.25))
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(0, 70), D=st.integers(1, 130), H=st.integers(1, 70),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2**31),
)
def test_property_tolerance(T, D, H, dtype, seed):
    assert_within_tolerance(make_inputs((T,), D, H, dtype, seed), "cpu")
