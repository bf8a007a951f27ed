"""The four native ops (docs/ARCHITECTURE.md §3) as Python functions; their fake (shape-only) implementations are in
op_fakes.py, the kernels in csrc/.

The compiled extension loads with this module where it is built (`load_library`): `torch.compile` cannot trace the
loading, so a compiled function making the process's first op call would fail under fullgraph. The package root,
configuration, tasks and file formats do not import this module, so they import without a build. Without a build, or
with one that does not load (built against another torch), importing still works and the first op call raises one
clear error."""
from __future__ import annotations

import importlib.util
import numbers
import types
from typing import Any, Optional, Union

import torch

from .op_fakes import register_fakes

IntOrTensor = Union[int, torch.Tensor]

_extension: Optional[types.ModuleType] = None


def load_library() -> types.ModuleType:
    """The compiled extension `sdtp_kernels._C`, loaded once; loading it registers `torch.ops.sdtp.*`, and the fake
    implementations below are registered then (they need the op schemas)."""
    global _extension
    if _extension is None:
        try:
            from . import _C
        except ImportError as error:
            state = "do not load" if _built() else "are not built"
            raise RuntimeError(
                f"sdtp_kernels: the native ops (sdtp_kernels._C) {state} in this installation ({error}); build them "
                "with `bash scripts/setup.sh` or `pip install .` from the source tree"
            ) from error
        register_fakes()
        _extension = _C
    return _extension


def build_info() -> dict:
    """What this installation was built with and can run on: version, torch, cpu (always True), cuda_compiled,
    cuda_archs, cuda_available (a device is visible)."""
    from .version import __version__

    extension = load_library()
    return {
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": True,
        "cuda_compiled": bool(extension.cuda_compiled),
        "cuda_archs": [a for a in extension.cuda_archs.replace(" ", ";").split(";") if a],
        "cuda_available": bool(extension.cuda_compiled) and torch.cuda.is_available(),
    }


def cuda_score_path(dtype: torch.dtype) -> str:
    """The implementation `saliency_score` runs on CUDA for hidden states of `dtype` under the current settings
    (SDTP_SCORE_PATH, torch's TF32 and float16-accumulation flags): "fused" or "gemm" (docs/ARCHITECTURE.md §3.1).
    Needs a build with the CUDA kernels, not a device."""
    extension = load_library()
    if not extension.cuda_compiled:
        raise RuntimeError("sdtp_kernels: this build has no CUDA kernels, so no CUDA score path")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"cuda_score_path: argument 'dtype' must be a torch.dtype, got {dtype!r}")
    return extension.cuda_score_path(str(dtype).removeprefix("torch."))


def _ops():
    load_library()
    return torch.ops.sdtp


def saliency_score(
    hidden: torch.Tensor,
    norm_weight: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: Union[float, torch.Tensor],
    eps: float = 1e-6,
) -> torch.Tensor:
    """Keep-minus-drop log-odds of every token, float32 of shape hidden.shape[:-1]:
    `gelu_erf(rmsnorm(hidden) * norm_weight @ w1.T + b1) @ w2 + b2`, computed in float32."""
    if not isinstance(b2, torch.Tensor):  # filled on the device: a copy from the host would stop graph capture
        b2 = torch.full((), float(b2), device=hidden.device)
    return _ops().saliency_score(hidden, norm_weight, w1, b1, w2, b2, eps)


def _not_bool(value: Any, name: str, op: str) -> Any:
    """The schema's int arguments take True as 1: refused, by name."""
    if isinstance(value, bool):
        raise TypeError(f"sdtp.{op}: argument '{name}' must be an int, got {value!r}")
    return value


def _row_tensor(value: IntOrTensor, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy's integers are Integral
        raise TypeError(f"sdtp.select_tokens: argument '{name}' must be an int or an integer tensor, got {value!r}")
    value = int(value)
    if not 0 <= value < 2**63:
        raise ValueError(f"sdtp.select_tokens: argument '{name}' must be >= 0 and fit int64, got {value}")
    return torch.tensor(value, dtype=torch.int64)


def select_tokens(
    scores: torch.Tensor,
    keep: IntOrTensor,
    valid: Optional[torch.Tensor] = None,
    num_sink: int = 4,
    num_local: IntOrTensor = 0,
    width: Optional[int] = None,
    *,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions each row keeps, ascending and right-aligned in `index [B, K]` (-1 on the left), and `counts [B]`.

    `keep` / `num_local`: an int or a [B] integer tensor (on the CPU, or on scores' device). `valid`: [B, N] mask,
    False/0 = padding. `width`: the output width K when the caller knows it (must be >= every row's count); by
    default K = max(counts), which on CUDA costs one device-to-host read. `check=False` (needs `width`): on CUDA,
    no device-to-host read to check device `keep` / `num_local` and `width`; the kernel asserts them instead
    (docs/ARCHITECTURE.md §3.4), for callers whose values are right by construction."""
    return _ops().select_tokens(
        scores, _row_tensor(keep, "keep"), valid, _not_bool(num_sink, "num_sink", "select_tokens"),
        _row_tensor(num_local, "num_local"), _not_bool(width, "width", "select_tokens"), check=check
    )


def compact(x: torch.Tensor, index: torch.Tensor, dim: int = 1, *, check: bool = True) -> torch.Tensor:
    """`out[b, ..., j, ...] = x[b, ..., index[b, j], ...]` along `dim`, zeros where index == -1. `check=False`: on
    CUDA, no device-to-host read of the index's range; the kernel asserts it instead (docs/ARCHITECTURE.md §3.4),
    for an index that is right by construction (select_tokens' own)."""
    return _ops().compact(x, index, _not_bool(dim, "dim", "compact"), check=check)


def compact_varlen(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of x [B, N, ...] picked by index (entries >= 0, in order), packed as FlashAttention's varlen layout:
    (packed [T, ...], cu_seqlens [B + 1] int32, max_seqlen)."""
    return _ops().compact_varlen(x, index)


def _built() -> bool:
    return importlib.util.find_spec(f"{__package__}._C") is not None


if _built():  # load now (see the module's docstring)
    try:
        load_library()
    except RuntimeError:
        pass  # a build that does not load: the first op call raises load_library's error
