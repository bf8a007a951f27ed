"""Per-request refusals (docs/ARCHITECTURE.md §7.4): what an engine serving an SDTP model cannot serve for one
request, refused when the request is made so that the engine goes on serving the others. A streaming-input session
(`AsyncLLM.generate` with `StreamingInput` chunks) resumes its request with the next chunk over a KV cache whose
pruned layers hold the first chunk's kept tokens only; the pruned step would stop the engine on it."""
from __future__ import annotations

import functools
import inspect

from .architectures import SERVED


def install() -> None:
    """Wrap InputProcessor.process_inputs (the frontend's one entry for a new request); idempotent."""
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs
    if getattr(original, "sdtp_checked", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def process_inputs(self, *args, **kwargs):
        resumable = signature.bind_partial(self, *args, **kwargs).arguments.get("resumable")
        if resumable and self.model_config.architecture in SERVED:
            raise ValueError(f"SDTP ({self.model_config.architecture}) cannot serve streaming input (a session "
                             "resumed chunk by chunk): send the whole prompt in one request")
        return original(self, *args, **kwargs)

    process_inputs.sdtp_checked = True
    InputProcessor.process_inputs = process_inputs
