"""Bad input raises a Python exception whose message names the offending argument; never a crash."""
import numpy as np
import pytest
import torch

import sdtp_kernels

S = torch.randn(2, 8)
X = torch.randn(2, 8, 4)
IDX = torch.tensor([[0, 1], [2, 3]])
SCORE_ARGS = dict(hidden=torch.randn(3, 16), norm_weight=torch.ones(16), w1=torch.randn(4, 16), b1=torch.zeros(4),
                  w2=torch.randn(4), b2=torch.tensor(0.0))


def score_with(**overrides):
    return sdtp_kernels.saliency_score(**{**SCORE_ARGS, **overrides})


def _raised(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


# Bad shapes, dtypes, devices and plain arguments: the fakes (sdtp_kernels/op_fakes.py) check them too.
CASES = [
    ("scores", lambda: sdtp_kernels.select_tokens(torch.randn(8), 2)),  # wrong rank
    ("scores", lambda: sdtp_kernels.select_tokens(S.long(), 2)),  # not floating
    ("valid", lambda: sdtp_kernels.select_tokens(S, 2, valid=torch.ones(2, 7, dtype=torch.bool))),  # mismatched N
    ("valid", lambda: sdtp_kernels.select_tokens(S, 2, valid=torch.ones(3, 8, dtype=torch.bool))),  # mismatched B
    ("valid", lambda: sdtp_kernels.select_tokens(S, 2, valid=torch.ones(2, 8))),  # float mask
    ("keep", lambda: sdtp_kernels.select_tokens(S, -1)),
    ("keep", lambda: sdtp_kernels.select_tokens(S, torch.tensor([1, 2, 3]))),  # wrong length
    ("keep", lambda: sdtp_kernels.select_tokens(S, torch.tensor([1.0, 2.0]))),  # float
    ("keep", lambda: sdtp_kernels.select_tokens(S, 2.5)),
    ("keep", lambda: sdtp_kernels.select_tokens(S, torch.tensor([1, 2], dtype=torch.uint16))),  # no CPU min
    ("keep", lambda: sdtp_kernels.select_tokens(S, 2**64)),  # beyond int64
    ("num_local", lambda: sdtp_kernels.select_tokens(S, 2, num_local=torch.tensor(1, dtype=torch.uint64))),
    ("num_local", lambda: sdtp_kernels.select_tokens(S, 2, num_local=-3)),
    ("num_sink", lambda: sdtp_kernels.select_tokens(S, 2, num_sink=-1)),
    ("num_sink", lambda: sdtp_kernels.select_tokens(S, 2, num_sink=True)),  # the schema's int would take it as 1
    ("width", lambda: sdtp_kernels.select_tokens(S, 1, num_sink=0, width=True)),
    ("x", lambda: sdtp_kernels.compact(torch.randn(8), IDX)),  # wrong rank
    ("index", lambda: sdtp_kernels.compact(X, IDX.float())),  # float index
    ("index", lambda: sdtp_kernels.compact(X, IDX[:1])),  # mismatched B
    ("dim", lambda: sdtp_kernels.compact(X, IDX, dim=0)),
    ("dim", lambda: sdtp_kernels.compact(X, IDX, dim=3)),
    ("dim", lambda: sdtp_kernels.compact(X, IDX, dim=True)),
    ("index", lambda: sdtp_kernels.compact_varlen(X, IDX.int())),
    ("hidden", lambda: score_with(hidden=torch.randn(3, 16).long())),
    ("hidden", lambda: score_with(hidden=torch.randn(3, 16).double())),
    ("w1", lambda: score_with(w1=torch.randn(4, 15))),
    ("norm_weight", lambda: score_with(norm_weight=torch.ones(15))),
    ("b1", lambda: score_with(b1=torch.zeros(5))),
    ("w2", lambda: score_with(w2=torch.randn(4, 1))),
    ("b2", lambda: score_with(b2=torch.zeros(2))),
    ("eps", lambda: score_with(eps=-1.0)),
    ("eps", lambda: score_with(eps=float("inf"))),  # every score would be the bias-only value
    ("w1", lambda: score_with(w1=torch.randn(4, 16, requires_grad=True))),  # no gradient: refused, not cut off
    ("hidden", lambda: score_with(hidden=torch.randn(3, 16, requires_grad=True))),
]
# Bad values only the data holds: the kernels check them.
VALUE_CASES = [
    ("keep", lambda: sdtp_kernels.select_tokens(S, torch.tensor([1, -2]))),
    ("width", lambda: sdtp_kernels.select_tokens(S, 6, width=3)),
    ("index", lambda: sdtp_kernels.compact(X, torch.tensor([[0, 8], [0, 1]]))),  # out of range
    ("index", lambda: sdtp_kernels.compact(X, torch.tensor([[0, -2], [0, 1]]))),
    ("index", lambda: sdtp_kernels.compact_varlen(X, torch.tensor([[0, 9], [0, 1]]))),
]
ALL_CASES = CASES + VALUE_CASES


@pytest.mark.parametrize("name,call", ALL_CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(ALL_CASES)])
def test_bad_input_names_the_argument(name, call):
    with pytest.raises((RuntimeError, ValueError, TypeError, IndexError)) as info:
        call()
    assert f"'{name}'" in str(info.value), str(info.value)


@pytest.mark.parametrize("name,call", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_fakes_raise_what_the_kernels_raise(name, call):
    """A traced call (torch.compile, opcheck) or a meta one fails as an eager one does, not with a wrong-shaped
    output: same exception type, same message."""
    expected = _raised(call)
    with torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True):
        got = _raised(call)
    assert type(got) is type(expected) and str(got) == str(expected), (got, expected)


def test_numpy_integers_are_ints():
    expected = sdtp_kernels.select_tokens(S, 3, num_sink=1, num_local=1)
    got = sdtp_kernels.select_tokens(S, np.int64(3), num_sink=np.int32(1), num_local=np.uint8(1))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_meta_tensors_are_checked():
    """The meta device runs the fakes: a bad shape raises there as on every other device."""
    meta = {name: t.to("meta") for name, t in SCORE_ARGS.items()}
    with pytest.raises(ValueError, match="argument 'b1' must have shape \\[H\\] = \\[4\\], got \\[5\\]"):
        sdtp_kernels.saliency_score(**{**meta, "b1": torch.zeros(5, device="meta")})
    with pytest.raises(TypeError, match="argument 'index' must be int64, got Float"):
        sdtp_kernels.compact(X.to("meta"), IDX.float().to("meta"))


@pytest.mark.parametrize(
    "call",
    [
        lambda: sdtp_kernels.select_tokens(S, 2, valid=torch.ones(2, 8, dtype=torch.bool, device="meta")),
        lambda: sdtp_kernels.compact(X, IDX.to("meta")),
        lambda: score_with(w1=torch.randn(4, 16, device="meta")),
    ],
)
def test_device_mix_is_rejected(call):
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    assert "device" in str(info.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cpu_mix_is_rejected():
    with pytest.raises(RuntimeError, match="'index'"):
        sdtp_kernels.compact(X.cuda(), IDX)
    with pytest.raises(RuntimeError, match="'valid'"):
        sdtp_kernels.select_tokens(S.cuda(), 2, valid=torch.ones(2, 8, dtype=torch.bool))


def _ones_mask(device):
    return torch.ones(2, 8, dtype=torch.bool, device=device)


# Values only the device holds (a mask, device keep / num_local, index entries): the CUDA op reads them back once
# and raises exactly what the CPU op raises, instead of a device-side assert (docs/ARCHITECTURE.md §3.4).
DEVICE_VALUE_CASES = {
    "width-device-keep": lambda d: sdtp_kernels.select_tokens(
        S.to(d), torch.tensor(6, device=d), valid=_ones_mask(d), num_local=torch.tensor([1, 2], device=d), width=3),
    "width-mask": lambda d: sdtp_kernels.select_tokens(S.to(d), 6, valid=_ones_mask(d), width=3),
    "keep-device-negative": lambda d: sdtp_kernels.select_tokens(S.to(d), torch.tensor([1, -2], device=d)),
    "num_local-device-negative": lambda d: sdtp_kernels.select_tokens(
        S.to(d), 2, num_local=torch.tensor(-3, device=d), width=8),
    "compact-index-above": lambda d: sdtp_kernels.compact(X.to(d), torch.tensor([[0, 8], [0, 1]], device=d)),
    "compact-index-below": lambda d: sdtp_kernels.compact(X.to(d), torch.tensor([[0, -2], [0, 1]], device=d)),
    "compact_varlen-index-above": lambda d: sdtp_kernels.compact_varlen(
        X.to(d), torch.tensor([[-1, 9], [0, 1]], device=d)),
}


@pytest.mark.parametrize("case", DEVICE_VALUE_CASES)
def test_device_values_raise_as_on_cpu(case, device):
    expected = _raised(lambda: DEVICE_VALUE_CASES[case]("cpu"))
    got = _raised(lambda: DEVICE_VALUE_CASES[case](device))
    assert type(got) is type(expected) and str(got) == str(expected), (got, expected)
    assert isinstance(expected, (ValueError, IndexError))
    assert torch.ones(3, device=device).sum().item() == 3  # the device is still usable


# check=False waives the CUDA op's read back (docs/ARCHITECTURE.md §3.4); the CPU op reads nothing back, so it checks.
CHECK_WAIVED_CASES = {
    "width-mask": lambda check: sdtp_kernels.select_tokens(S, 6, valid=_ones_mask("cpu"), width=3, check=check),
    "keep-negative": lambda check: sdtp_kernels.select_tokens(S, torch.tensor([1, -2]), width=8, check=check),
    "num_local-negative": lambda check: sdtp_kernels.select_tokens(
        S, 2, num_local=torch.tensor(-3), width=8, check=check),
    "compact-index-above": lambda check: sdtp_kernels.compact(X, torch.tensor([[0, 8], [0, 1]]), check=check),
}


@pytest.mark.parametrize("case", CHECK_WAIVED_CASES)
def test_check_false_still_checks_on_the_cpu(case):
    expected = _raised(lambda: CHECK_WAIVED_CASES[case](True))
    got = _raised(lambda: CHECK_WAIVED_CASES[case](False))
    assert type(got) is type(expected) and str(got) == str(expected), (got, expected)
    assert isinstance(expected, (ValueError, IndexError))


def test_check_false_needs_width(device):
    """Without a read back the output width cannot be known: the same error on every device and in the fake."""
    keep = torch.tensor([2, 3], device=device)
    with pytest.raises(ValueError, match="'width' is required with check=False"):
        sdtp_kernels.select_tokens(S.to(device), keep, check=False)
    with pytest.raises(ValueError, match="'width' is required with check=False"):
        with torch._subclasses.fake_tensor.FakeTensorMode():
            sdtp_kernels.select_tokens(torch.empty(2, 8), torch.tensor([2, 3]), check=False)


def test_saliency_score_takes_weights_that_require_grad_only_without_grad_mode(device):
    """The op has no backward: with gradients on, an input that requires grad is refused by name on every device
    (before, the CPU kernel failed inside and CUDA returned scores cut from the graph); without, it just runs."""
    args = {name: t.to(device) for name, t in SCORE_ARGS.items()}
    w1 = args["w1"].clone().requires_grad_()
    with pytest.raises(RuntimeError, match="argument 'w1' requires grad"):
        sdtp_kernels.saliency_score(**{**args, "w1": w1})
    with torch.no_grad():
        got = sdtp_kernels.saliency_score(**{**args, "w1": w1})
    assert torch.equal(got, sdtp_kernels.saliency_score(**args))

