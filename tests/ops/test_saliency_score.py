"""saliency_score meets docs/ARCHITECTURE.md §3.1: against an fp64 reference its error is within 2x the error of
the same computation done unfused in PyTorch in the input dtype, or within a few float32 roundings of the w2 dot's
summands (its condition: where the dot cancels large terms, no float32 computation does better)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import python_ref
import sdtp_kernels
from conftest import CUDA


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


def dot_condition(hidden, norm_weight, w1, b1, w2, b2):
    """Per token, sum_h |w2_h * gelu_h| + |b2| in float64: the size of the summands the w2 dot adds up. A float32
    result carries rounding errors of that size, however small the sum they cancel down to."""
    x = hidden.double()
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_weight.double()
    gelu = torch.nn.functional.gelu(normed @ w1.double().T + b1.double())
    return (gelu * w2.double()).abs().sum(-1) + b2.double().abs()


def assert_within_tolerance(inputs, device, args=None):
    """The same rule on every device: per token, the error against float64 is at most twice the worst error of the
    unfused computation in the input dtype, or 16 float32 roundings of the w2 dot's summands. `args`: the op's
    arguments when they are not simply `inputs` moved to `device` (views with their own strides, say)."""
    got = sdtp_kernels.saliency_score(*(args or [t.to(device) for t in inputs])).cpu()
    assert_scores_within_tolerance(inputs, got)


def assert_scores_within_tolerance(inputs, got):
    """The rule of assert_within_tolerance for scores `got` computed elsewhere."""
    exact = python_ref.saliency_score(*inputs, compute_dtype=torch.float64)
    plain = python_ref.saliency_score(*inputs, compute_dtype=inputs[0].dtype)
    assert got.dtype == torch.float32 and got.shape == inputs[0].shape[:-1]
    if got.numel() == 0:
        return
    err = (got.double() - exact).abs()
    allowed = 2 * (plain.double() - exact).abs().max().item()
    floor = 16 * torch.finfo(torch.float32).eps * dot_condition(*inputs)
    worst = (err - torch.clamp(floor, min=allowed)).argmax()
    assert (err <= torch.clamp(floor, min=allowed)).all(), (err.flatten()[worst].item(), allowed,
                                                            floor.flatten()[worst].item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D,H", [(64, 16), (100, 1), (37, 2048), (256, 200), (8, 3)])
def test_tolerance_rule(dtype, D, H, device):
    assert_within_tolerance(make_inputs((2, 33), D, H, dtype), device)


def test_float32_weights_with_half_hidden(device):
    assert_within_tolerance(make_inputs((50,), 96, 24, torch.bfloat16, weight_dtype=torch.float32), device)


@pytest.mark.parametrize("path", ["fused", "gemm"])  # CUDA's two paths; the CPU has one
def test_weights_of_any_floating_dtype_and_stride(path, device, monkeypatch):
    """Weights as a model may hold them beside bf16 activations: float64, float32, float16 and bfloat16 at once, and
    strided views (norm_weight, b1, w2 each a view with a stride > 1, w1 transposed twice, b2 0-d)."""
    monkeypatch.setenv("SDTP_SCORE_PATH", path)
    hidden, nw, w1, b1, w2, b2 = make_inputs((40,), 72, 20, torch.bfloat16, weight_dtype=torch.float32)
    nw, b1, w2, b2 = nw.double(), b1.half(), w2.bfloat16(), b2.half()
    args = [
        hidden.to(device),
        torch.stack([nw, torch.zeros_like(nw)], 1).to(device)[:, 0],
        w1.T.contiguous().to(device).T,
        b1.repeat_interleave(3).to(device)[::3],
        torch.stack([w2, -w2], 1).to(device)[:, 0],
        b2.to(device),
    ]
    assert [a.stride() for a in args[1:]] == [(2,), (1, 20), (3,), (2,), ()]
    assert_within_tolerance((hidden, nw, w1, b1, w2, b2), device, args)


@pytest.mark.parametrize("path", ["fused", "gemm"])
def test_float8_weights(path, device, monkeypatch):
    """Any floating dtype the op accepts is read, float8 included (converted to float32 first)."""
    monkeypatch.setenv("SDTP_SCORE_PATH", path)
    hidden, nw, w1, b1, w2, b2 = make_inputs((30,), 48, 12, torch.bfloat16)
    assert_within_tolerance((hidden, nw.to(torch.float8_e4m3fn), w1.to(torch.float8_e4m3fn), b1, w2, b2), device)


@pytest.mark.parametrize("tokens_shape", [(0,), (3, 0), (1,), (2, 3, 5)])
def test_token_shapes(tokens_shape, device):
    assert_within_tolerance(make_inputs(tokens_shape, 40, 12, torch.float32), device)


def test_non_contiguous_hidden_and_python_float_b2(device):
    hidden, nw, w1, b1, w2, _ = make_inputs((9, 4), 48, 10, torch.float32)
    hidden = hidden.transpose(0, 1)  # [4, 9, 48], not contiguous
    got = sdtp_kernels.saliency_score(*(t.to(device) for t in (hidden, nw, w1, b1, w2)), 0.25)
    ref = python_ref.saliency_score(hidden, nw, w1, b1, w2, torch.tensor(0.25))
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_changes_nothing(dtype, device):
    """Under torch.autocast (lm-evaluation-harness's mixed_precision_dtype, a training forward) the op still
    computes in float32: the same scores as without it. Autocast reached the CPU kernel's GEMM, which came back in
    bfloat16 and was refused by its float32 epilogue."""
    args = [t.to(device) for t in make_inputs((3, 17), 64, 24, dtype)]
    plain = sdtp_kernels.saliency_score(*args)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        autocast = sdtp_kernels.saliency_score(*args)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)


@pytest.mark.parametrize("seed", [194, 258, 342, 673, 691])
def test_cancelling_w2_dot_regression(seed, device):
    """fp32, T=2, D=94, H=59: seeds where the w2 dot cancels summands far larger than its result, so that a floor
    proportional to |result| failed about one draw in 125 (these five among the first 700)."""
    assert_within_tolerance(make_inputs((2,), 94, 59, torch.float32, seed), device)


def test_eps_zero_with_an_all_zero_row(device):
    """eps = 0 and a row of zeros: 0 / rms(0) is NaN, in the reference and in the op alike; other rows unharmed."""
    inputs = make_inputs((3,), 64, 8, torch.float32)
    inputs[0][1] = 0
    got = sdtp_kernels.saliency_score(*(t.to(device) for t in inputs), eps=0.0).cpu()
    ref = python_ref.saliency_score(*inputs, eps=0.0)
    assert torch.isnan(got[1]) and torch.isnan(ref[1])
    torch.testing.assert_close(got[[0, 2]], ref[[0, 2]], rtol=1e-4, atol=1e-4)


# Both CUDA implementations (csrc/cuda/score_paths.h), each forced through SDTP_SCORE_PATH.
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("path", ["fused", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens,D,H", [(66, 64, 16), (66, 37, 2048), (9, 8, 3), (300, 4096, 1024), (70000, 64, 8)])
def test_cuda_score_paths(path, dtype, tokens, D, H, monkeypatch):
    monkeypatch.setenv("SDTP_SCORE_PATH", path)
    inputs = make_inputs((tokens,), D, H, dtype)
    assert_within_tolerance(inputs, "cuda")
    cuda_inputs = [t.cuda() for t in inputs]
    first, second = (sdtp_kernels.saliency_score(*cuda_inputs) for _ in range(2))
    assert torch.equal(first, second)  # deterministic: no atomics, fixed reduction order


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_score_path_variable_is_checked(monkeypatch):
    monkeypatch.setenv("SDTP_SCORE_PATH", "fastest")
    with pytest.raises(ValueError, match="SDTP_SCORE_PATH"):
        sdtp_kernels.saliency_score(*(t.cuda() for t in make_inputs((2,), 8, 4, torch.float32)))


# The rule that picks the CUDA path (csrc/cuda/score_rule.cu) under each of torch's matmul settings, alone and mixed:
# the path per dtype. Each case runs in its own process (settings are process-wide, and once fp32_precision is set
# torch refuses the older queries for the process).
RULE_CASES = [
    ("", {"float32": "gemm", "float16": "gemm", "bfloat16": "gemm"}),
    ("torch.backends.cuda.matmul.allow_tf32 = True", {"float32": "fused", "bfloat16": "gemm"}),
    ('torch.set_float32_matmul_precision("high")', {"float32": "fused", "bfloat16": "gemm"}),
    ('torch.backends.cuda.matmul.fp32_precision = "tf32"', {"float32": "fused", "float16": "gemm", "bfloat16": "gemm"}),
    ('torch.backends.fp32_precision = "tf32"', {"float32": "fused", "bfloat16": "gemm"}),
    ('torch.backends.cuda.matmul.fp32_precision = "ieee"', {"float32": "gemm", "bfloat16": "gemm"}),
    ('torch.backends.mkldnn.matmul.fp32_precision = "bf16"', {"float32": "gemm", "bfloat16": "gemm"}),
    ('torch.set_float32_matmul_precision("high"); torch.backends.cuda.matmul.allow_tf32 = False', {"float32": "gemm"}),
    ('torch.backends.fp32_precision = "tf32"; torch.backends.cuda.matmul.fp32_precision = "ieee"', {"float32": "gemm"}),
    ("torch.backends.cuda.matmul.allow_fp16_accumulation = True", {"float32": "gemm", "float16": "fused",
                                                                   "bfloat16": "gemm"}),
    ("os.environ['SDTP_SCORE_PATH'] = 'fused'", {"float32": "fused", "float16": "fused", "bfloat16": "fused"}),
]
CUDA_COMPILED = sdtp_kernels.build_info()["cuda_compiled"]


def run_with_setting(setting, body):
    """Runs `body` in a fresh Python process after `setting`; returns its stdout."""
    code = f"import os, sys, json, torch\nimport sdtp_kernels\n{setting}\n{textwrap.dedent(body)}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.cuda  # selected by the GPU check too (another torch there), runs without a device
@pytest.mark.skipif(not CUDA_COMPILED, reason="needs the CUDA build (not a device)")
@pytest.mark.parametrize("setting, expected", RULE_CASES)
def test_cuda_score_path_rule_under_each_matmul_setting(setting, expected):
    out = run_with_setting(setting, f"""
        paths = {{d: sdtp_kernels.cuda_score_path(getattr(torch, d)) for d in {sorted(expected)!r}}}
        print(json.dumps(paths))""")
    got = json.loads(out.splitlines()[-1])
    assert got.keys() == expected.keys()
    for dtype, path in got.items():
        assert path == expected[dtype], (dtype, path)


@pytest.mark.skipif(not CUDA_COMPILED, reason="needs the CUDA build (not a device)")
def test_gemm_forced_for_float16_with_float16_accumulation_is_refused(monkeypatch):
    monkeypatch.setenv("SDTP_SCORE_PATH", "gemm")
    torch.backends.cuda.matmul.allow_fp16_accumulation = True
    try:
        with pytest.raises(ValueError, match="allow_fp16_accumulation"):
            sdtp_kernels.cuda_score_path(torch.float16)
        assert sdtp_kernels.cuda_score_path(torch.bfloat16) == "gemm"
    finally:
        torch.backends.cuda.matmul.allow_fp16_accumulation = False
    with pytest.raises(TypeError, match="'dtype'"):
        sdtp_kernels.cuda_score_path("float16")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        sdtp_kernels.cuda_score_path(torch.float64)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("setting", [case[0] for case in RULE_CASES])
def test_cuda_op_under_each_matmul_setting(setting, tmp_path):
    """The op runs under every setting, on the path the rule picks, within the tolerance."""
    inputs = {str(d).removeprefix("torch."): make_inputs((70,), 96, 40, d) for d in (torch.float32, torch.float16,
                                                                                    torch.bfloat16)}
    torch.save(inputs, tmp_path / "inputs.pt")
    run_with_setting(setting, f"""
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        got = {{d: sdtp_kernels.saliency_score(*(t.cuda() for t in args)).cpu() for d, args in inputs.items()}}
        torch.save(got, {str(tmp_path / "got.pt")!r})""")
    for dtype, got in torch.load(tmp_path / "got.pt").items():
        assert_scores_within_tolerance(inputs[dtype], got)


# SDTP_HYPOTHESIS_EXAMPLES=2000 for a long local run; CI keeps the usual count.
@settings(max_examples=int(os.environ.get("SDTP_HYPOTHESIS_EXAMPLES", "40")), deadline=None)
@given(
    T=st.integers(0, 70), D=st.integers(1, 130), H=st.integers(1, 70),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2**31),
)
def test_property_tolerance(T, D, H, dtype, seed):
    assert_within_tolerance(make_inputs((T,), D, H, dtype, seed), "cpu")
