"""Fake (shape-only) implementations of the native ops, for `torch.compile`, `torch.library.opcheck` and meta tensors.

Each fake first makes the checks csrc/validate.cpp makes on shapes, dtypes, devices and plain arguments, with the same
exception type and message, so that a traced or meta call fails where an eager one would instead of returning a
wrong-shaped output; tests/ops/test_op_errors.py holds the two to the same words. Checks of values only the data
holds (a negative `keep`, an index out of range, a `width` below a row's count) stay with the kernels."""
from __future__ import annotations

import math

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

_SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ROW_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_MASK_DTYPES = (torch.bool, *_ROW_DTYPES, torch.uint16, torch.uint32, torch.uint64)


def _known(condition) -> bool:
    """A size condition, True only where it holds for sure: one that depends on data the trace has not seen (the
    width of an earlier select_tokens) is the kernel's to check, and asking it would stop the trace."""
    return guard_or_false(condition)


def _type(dtype: torch.dtype) -> str:
    """The dtype as the kernels' messages print it (c10's ScalarType name: Long, BFloat16, ...)."""
    return torch.empty(0, dtype=dtype).type().rpartition(".")[2].removesuffix("Tensor")


def _shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str, op: str) -> None:
    if t.device != ref.device:
        raise RuntimeError(f"{op}: argument '{name}' must be on the same device as '{ref_name}' ({ref.device}), got "
                           f"{t.device}")


def check_score_inputs(hidden, norm_weight, w1, b1, w2, b2, eps) -> None:
    op = "sdtp.saliency_score"
    if hidden.dtype not in _SCORE_DTYPES:
        raise TypeError(f"{op}: argument 'hidden' must be float32, float16 or bfloat16, got {_type(hidden.dtype)}")
    if hidden.dim() < 1:
        raise ValueError(f"{op}: argument 'hidden' must have shape [..., D], got a 0-d tensor")
    D = hidden.shape[-1]
    if _known(D < 1):
        raise ValueError(f"{op}: argument 'hidden' must have D >= 1 features, got shape {_shape(hidden.shape)}")
    if w1.dim() != 2 or _known(w1.shape[1] != D) or _known(w1.shape[0] < 1):
        raise ValueError(f"{op}: argument 'w1' must have shape [H, D] with D = {D}, got {_shape(w1.shape)}")
    H = w1.shape[0]
    for name, t, size, letter in (("norm_weight", norm_weight, D, "D"), ("b1", b1, H, "H"), ("w2", w2, H, "H")):
        if t.dim() != 1 or _known(t.shape[0] != size):
            raise ValueError(f"{op}: argument '{name}' must have shape [{letter}] = [{size}], got {_shape(t.shape)}")
    if b2.dim() > 1 or _known(b2.numel() != 1):
        raise ValueError(f"{op}: argument 'b2' must be a scalar tensor, got shape {_shape(b2.shape)}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"{op}: argument 'eps' must be finite and >= 0, got {eps:g}")
    for name, t in (("norm_weight", norm_weight), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if not t.dtype.is_floating_point:
            raise TypeError(f"{op}: argument '{name}' must be a floating-point tensor, got {_type(t.dtype)}")
        _check_same_device(t, name, hidden, "hidden", op)


def _check_row_argument(t: torch.Tensor, name: str, B, scores: torch.Tensor) -> None:
    op = "sdtp.select_tokens"
    if t.dtype not in _ROW_DTYPES:
        raise TypeError(f"{op}: argument '{name}' must be an integer tensor (int8 to int64, or uint8), got "
                        f"{_type(t.dtype)}")
    if t.dim() > 1 or (t.dim() == 1 and _known(t.shape[0] != B)):
        raise ValueError(f"{op}: argument '{name}' must be a scalar or of shape [B] = [{B}], got {_shape(t.shape)}")
    if t.device.type != "cpu" and t.device != scores.device:
        raise RuntimeError(f"{op}: argument '{name}' must be on the CPU or on the device of 'scores' "
                           f"({scores.device}), got {t.device}")


def check_select_inputs(scores, keep, valid, num_sink, num_local, width, check) -> None:
    op = "sdtp.select_tokens"
    if scores.dim() != 2:
        raise ValueError(f"{op}: argument 'scores' must have shape [B, N], got {_shape(scores.shape)}")
    if scores.dtype not in _SCORE_DTYPES:
        raise TypeError(f"{op}: argument 'scores' must be float32, float16 or bfloat16, got {_type(scores.dtype)}")
    B, N = scores.shape
    if _known(N >= 2**31):
        raise ValueError(f"{op}: argument 'scores' has N = {N} tokens; at most 2^31 - 1 are supported")
    _check_row_argument(keep, "keep", B, scores)
    if num_local is not None:
        _check_row_argument(num_local, "num_local", B, scores)
    if _known(num_sink < 0):
        raise ValueError(f"{op}: argument 'num_sink' must be >= 0, got {num_sink}")
    if width is not None and _known(width < 0):
        raise ValueError(f"{op}: argument 'width' must be >= 0, got {width}")
    if not check and width is None:
        raise ValueError(f"{op}: argument 'width' is required with check=False (the output width is not read back "
                         "then)")
    if valid is not None:
        if valid.dtype not in _MASK_DTYPES:
            raise TypeError(f"{op}: argument 'valid' must be a bool or integer mask, got {_type(valid.dtype)}")
        if valid.dim() != 2 or any(_known(v != s) for v, s in zip(valid.shape, scores.shape)):
            raise ValueError(f"{op}: argument 'valid' must have the shape of 'scores' {_shape(scores.shape)}, got "
                             f"{_shape(valid.shape)}")
        _check_same_device(valid, "valid", scores, "scores", op)


def check_compact_inputs(x, index, dim: int, op: str) -> int:
    """The sequence dim, made non-negative."""
    if x.dim() < 2:
        raise ValueError(f"{op}: argument 'x' must have at least 2 dims [B, N, ...], got {_shape(x.shape)}")
    if index.dtype != torch.int64:
        raise TypeError(f"{op}: argument 'index' must be int64, got {_type(index.dtype)}")
    if index.dim() != 2 or _known(index.shape[0] != x.shape[0]):
        raise ValueError(f"{op}: argument 'index' must have shape [B, K] with B = {x.shape[0]}, got "
                         f"{_shape(index.shape)}")
    _check_same_device(index, "index", x, "x", op)
    d = dim + x.dim() if dim < 0 else dim
    if not 1 <= d < x.dim():
        raise ValueError(f"{op}: argument 'dim' must name a sequence dim in [1, {x.dim() - 1}] (or its negative), got "
                         f"{dim}")
    return d


def register_fakes() -> None:
    """Registers the fakes; needs the op schemas, i.e. the loaded extension."""

    @torch.library.register_fake("sdtp::saliency_score")
    def _saliency_score_fake(hidden, norm_weight, w1, b1, w2, b2, eps=1e-6):
        check_score_inputs(hidden, norm_weight, w1, b1, w2, b2, eps)
        return hidden.new_empty(hidden.shape[:-1], dtype=torch.float32)

    @torch.library.register_fake("sdtp::select_tokens")
    def _select_tokens_fake(scores, keep, valid=None, num_sink=4, num_local=None, width=None, *, check=True):
        check_select_inputs(scores, keep, valid, num_sink, num_local, width, check)
        if width is None:
            width = torch.library.get_ctx().new_dynamic_size()
        B = scores.shape[0]
        return scores.new_empty((B, width), dtype=torch.int64), scores.new_empty((B,), dtype=torch.int64)

    @torch.library.register_fake("sdtp::compact")
    def _compact_fake(x, index, dim=1, *, check=True):
        d = check_compact_inputs(x, index, dim, "sdtp.compact")
        shape = list(x.shape)
        shape[d] = index.shape[1]
        return x.new_empty(shape)

    @torch.library.register_fake("sdtp::compact_varlen")
    def _compact_varlen_fake(x, index):
        check_compact_inputs(x, index, 1, "sdtp.compact_varlen")
        ctx = torch.library.get_ctx()
        total, max_seqlen = ctx.new_dynamic_size(), ctx.new_dynamic_size()
        packed = x.new_empty((total, *x.shape[2:]))
        return packed, x.new_empty((x.shape[0] + 1,), dtype=torch.int32), max_seqlen
