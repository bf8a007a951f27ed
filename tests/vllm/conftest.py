"""The vLLM tests run in build/vllm-venv (scripts/test_vllm.sh), against the package installed there: vLLM pins its
own torch, so the source tree's extension (built for .venv) cannot load in it."""
import importlib.util
import os

import pytest

# This folder is itself importable as a namespace package "vllm" (tests/ is on sys.path): only a real one counts.
_spec = importlib.util.find_spec("vllm")
HAS_VLLM = _spec is not None and _spec.origin is not None
NO_VLLM = "vLLM is not installed in this environment: run scripts/test_vllm.sh (vLLM's CPU build in build/vllm-venv)"
# The engine core is a separate process: these reach it through the environment.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default fails the memory check on a small host
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with a function: reads state back

if HAS_VLLM:
    import sdtp_kernels

    if "site-packages" not in sdtp_kernels.__file__:
        raise RuntimeError(f"the vLLM tests imported sdtp_kernels from {sdtp_kernels.__file__}, not from the vLLM "
                           "environment: run them with scripts/test_vllm.sh")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if not HAS_VLLM and str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=NO_VLLM))
