"""What a prefill costs: analytic FLOPs per layer schedule, peak memory and timing of one call. Shared by the
benchmarks and `sdtp demo`."""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import pathlib
import subprocess
import sys
import time
from typing import Callable, ContextManager, Optional

import torch

from .config import SDTPConfig

PEAK_MEM_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during the call, minus the memory allocated before it",
    "cpu": "process peak resident memory (VmHWM, reset through /proc/self/clear_refs) during the call, minus the "
    "resident memory before it",
}
FLOPS_METHOD = (
    "2 FLOPs per multiply-add of every matrix product: per decoder layer q/k/v/o projections and the MLP (gated: "
    "three matrices; plain: two) for each token the layer holds, QK^T and AV over all query-key pairs (the full n x m "
    "product, as the paper's Table 2 counts it, not the causal half), the LM head for each generated token, and for "
    "SDTP the predictors; norms, activations and softmax are not counted. Dense decoder layers only: null for "
    "mixture-of-experts and latent-attention models"
)
# Config fields of structures the formula does not model: routed experts, latent (low-rank) attention.
_UNMODELLED = ("num_local_experts", "num_experts", "n_routed_experts", "kv_lora_rank", "q_lora_rank")
_PLAIN_MLP = {"bloom", "phi", "starcoder2"}  # up and down projections only; the other supported models are gated


def layer_tokens(sdtp: SDTPConfig, num_layers: int, length: int) -> list[int]:
    """Tokens each decoder layer holds after an SDTP prefill of one `length`-token prompt."""
    stages = sdtp.stage_layers(num_layers)
    return [sdtp.kept_count(length, sum(s <= layer for s in stages)) for layer in range(num_layers)]


def flops(config, tokens: list[int], new_tokens: int,
          predictor: tuple[int, list[int]] = (0, [])) -> Optional[tuple[int, int]]:
    """(prefill, end to end) FLOPs of one prompt whose layers hold `tokens`; predictor = (hidden width, the
    stage layers it scores before). None for a model whose layers the formula does not model (FLOPS_METHOD)."""
    if any(getattr(config, name, None) for name in _UNMODELLED):
        return None
    d, heads, vocab = config.hidden_size, config.num_attention_heads, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or d // heads  # Gemma, Qwen3: wider than d / heads
    q_width, kv_width = heads * head_dim, (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(config, "intermediate_size", None) or 4 * d  # BLOOM has none: 4 x wide
    mlp = (2 if config.model_type in _PLAIN_MLP else 3) * d * inter
    per_token = 2 * (d * (q_width + 2 * kv_width) + q_width * d + mlp)
    pairs = 2 * 2 * q_width  # QK^T and AV, per query-key pair

    def step(queries: list[int], keys: list[int]) -> int:
        return sum(per_token * q + pairs * q * k for q, k in zip(queries, keys)) + 2 * d * vocab

    width, stage_layers = predictor
    scoring = sum(2 * tokens[layer - 1] * (d * width + width) for layer in stage_layers)
    prefill = step(tokens, tokens) + scoring
    decode = sum(step([1] * len(tokens), [n + t for n in tokens]) for t in range(1, new_tokens))
    return prefill, prefill + decode


def on_cuda(device: str) -> bool:
    """Whether `device` ("cuda", "cuda:1", ...) is a GPU: its work must be waited for and its memory read there."""
    return torch.device(device).type == "cuda"


def peak_mem_method(device: str) -> str:
    return PEAK_MEM_METHOD["cuda" if on_cuda(device) else "cpu"]


class PeakMemory:
    """Additional memory at the peak of the enclosed block (see PEAK_MEM_METHOD)."""

    def __init__(self, device: str):
        self.device = device
        self.bytes = 0

    @staticmethod
    def _rss(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    def __enter__(self):
        if on_cuda(self.device):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed blocks back so that they do not hide the peak
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self.base = self._rss("VmRSS:")
        return self

    def __exit__(self, *exc):
        if on_cuda(self.device):
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.bytes = self._rss("VmHWM:") - self.base


# wall: latency. cpu: the process's CPU time, which other processes on a shared machine do not inflate; equal to
# the latency of a single-threaded run (--threads 1) on an idle machine, but not of a multi-threaded one.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(fn, device: str, clock) -> tuple[float, int]:
    """(time, peak additional memory) of one call."""
    with PeakMemory(device) as memory:
        start = clock()
        fn()
        if on_cuda(device):
            torch.cuda.synchronize(device)
        seconds = clock() - start
    return seconds, memory.bytes


def interleaved(modes: dict[str, Callable[[], ContextManager]], fn: Callable[[], object], device: str,
                repeats: int, clock) -> dict[str, list[tuple[float, int]]]:
    """(time, peak additional memory) of `repeats` calls of fn in each mode (a context the call runs in, e.g. with
    pruning off), the modes taking turns call by call, so that a change in the machine's load slows all alike."""
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, mode in modes.items():
            with mode():
                runs[name].append(measure(fn, device, clock))
    return runs


def highest_peak(runs: list[tuple[float, int]]) -> int:
    """The highest peak memory of repeated (time, peak memory) calls: a peak over all of them, not the fastest one's."""
    return max(memory for _, memory in runs)


@contextlib.contextmanager
def profiling(device: str):
    """torch.profiler over the block (CPU operators, and CUDA kernels on "cuda", waited for at its end), yielding the
    profile; the profiler's native log lines are kept out of the output."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda(device):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with _native_stderr_silenced(), torch.profiler.profile(activities=activities) as profile:
        yield profile
        if on_cuda(device):
            torch.cuda.synchronize(device)


@contextlib.contextmanager
def _native_stderr_silenced():
    """torch.profiler's native library logs start/stop lines (and, on a machine without a GPU, a device-count error)
    straight to file descriptor 2: silence it, not Python's own stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def environment_variable(name: str, value: Optional[str]):
    """The environment variable `name` set to `value` inside the block and as it was after it; nothing for None. For
    the settings the library reads at every call (SDTP_SCORE_PATH, SDTP_AVOID_CUDNN_SDPA), which benchmarks vary."""
    if value is None:
        yield
        return
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


def provenance() -> dict:
    """What a benchmark's figures depend on besides its own arguments: the source (a hash of the package's Python
    sources and, in a source tree, of csrc/ and bench/; the git commit and whether the tree had changes where the
    package sits in its repository's root), the build, and the settings that choose kernels (torch's matmul precision
    flags, SDTP_SCORE_PATH, SDTP_AVOID_CUDNN_SDPA)."""
    from . import ops

    package = pathlib.Path(__file__).resolve().parent
    root = package.parent
    files = sorted([*package.rglob("*.py"), *(root / "csrc").rglob("*"), *(root / "bench").glob("*.py")])
    digest = hashlib.sha256()
    for path in (p for p in files if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    info = {"source_sha256": digest.hexdigest()[:16], "git_commit": None, "git_dirty": None,
            "build_info": ops.build_info(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            **{name: os.environ.get(name) for name in ("SDTP_SCORE_PATH", "SDTP_AVOID_CUDNN_SDPA")},
            "matmul": _matmul_settings()}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        # Only the repository this tree is the root of: an installed copy inside some other repository is not it.
        if pathlib.Path(git("rev-parse", "--show-toplevel")).resolve() == root:
            info["git_commit"] = git("rev-parse", "HEAD")
            info["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass  # no repository (a copy of the tree, an installed package): the source hash stands alone
    return info


def _matmul_settings() -> dict:
    """torch.backends.cuda.matmul's flags; a legacy flag that torch refuses to read (once the fp32_precision API was
    used) is recorded as its error."""
    matmul = torch.backends.cuda.matmul
    settings = {}
    for name in ("fp32_precision", "allow_tf32", "allow_bf16_reduced_precision_reduction",
                 "allow_fp16_reduced_precision_reduction", "allow_fp16_accumulation"):
        try:
            settings[name] = getattr(matmul, name, None)
        except RuntimeError as error:
            settings[name] = f"unreadable: {str(error)[:80]}"
    try:
        settings["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    except RuntimeError as error:
        settings["float32_matmul_precision"] = f"unreadable: {str(error)[:80]}"
    return settings
