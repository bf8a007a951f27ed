"""The `vllm.general_plugins` entry point (docs/ARCHITECTURE.md §7.2). vLLM calls `register` in every process it
starts (engine core, workers, the API server): the SDTP architectures join vLLM's model registry (imported lazily,
when a folder names one), their engine-start checks join vLLM's per-architecture config hooks, vLLM's defaults leave
chunked prefill and prefix caching off for them, the runner link is installed, and streaming-input requests to them
are refused one by one (request_checks)."""
from __future__ import annotations

from . import defaults, request_checks, runner_link
from .architectures import SDTP_ARCHITECTURES
from .engine_checks import SDTPEngineChecks


def register() -> None:
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    for architecture in SDTP_ARCHITECTURES.values():
        ModelRegistry.register_model(architecture, f"sdtp_kernels.vllm.models:{architecture}")
        MODELS_CONFIG_MAP[architecture] = SDTPEngineChecks
    defaults.install()
    runner_link.install()
    request_checks.install()
