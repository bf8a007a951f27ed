"""vLLM's defaults for an SDTP architecture (docs/ARCHITECTURE.md §7.2). vLLM turns chunked prefill and prefix caching
on by default when the model's configuration says it supports them (`ModelConfig.is_chunked_prefill_supported`,
`is_prefix_caching_supported`), and with chunked prefill off it raises the token budget of a step to the model
length. An SDTP architecture says it supports neither, so `vllm serve OUT` and `LLM(model=OUT)` need no flags;
asking for either explicitly is still refused at engine start (engine_checks)."""
from __future__ import annotations

from .architectures import SERVED

# The ModelConfig properties this module wraps (also checked by engine_checks' internals check).
WRAPPED = ("is_chunked_prefill_supported", "is_prefix_caching_supported")


def _unsupported_for_sdtp(original: property) -> property:
    def get(model_config) -> bool:
        return False if model_config.architecture in SERVED else original.fget(model_config)

    get.sdtp_original = original
    return property(get, doc=original.__doc__)


def install() -> None:
    """Idempotent: vLLM loads the plugin once per process, but a process may import it again."""
    from vllm.config import ModelConfig

    for name in WRAPPED:
        current = getattr(ModelConfig, name)
        if not hasattr(current.fget, "sdtp_original"):
            setattr(ModelConfig, name, _unsupported_for_sdtp(current))
