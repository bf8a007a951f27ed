"""Which model runner is calling the model (docs/ARCHITECTURE.md §7.2). vLLM's model sees neither request ids nor
the runner; the runner's `_model_forward`, the step's one call of the model, is wrapped so that the SDTP model can
read the runner's batch (requests, query starts, block tables, attention groups) during that call. Dummy and
profiling runs call the model directly and so run unpruned."""
from __future__ import annotations

import contextvars
import functools

_runner = contextvars.ContextVar("sdtp_vllm_runner", default=None)


def current_runner():
    """The runner whose step is in flight, or None outside a step."""
    return _runner.get()


def install() -> None:
    """Wrap GPUModelRunner._model_forward (the CPU runner inherits it); idempotent."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._model_forward
    if getattr(original, "sdtp_linked", False):
        return

    @functools.wraps(original)
    def _model_forward(self, *args, **kwargs):
        token = _runner.set(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            _runner.reset(token)

    _model_forward.sdtp_linked = True
    GPUModelRunner._model_forward = _model_forward
