import os
import pathlib
import sys

import pytest
import torch

import sdtp_kernels

# lm-evaluation-harness lives beside .venv (scripts/setup_harness.sh); appended, so .venv's packages come first.
HARNESS = pathlib.Path(__file__).resolve().parents[1] / "build" / "lm-eval"
# No test needs the Hugging Face Hub: fail at once instead of waiting on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if HARNESS.is_dir():
    sys.path.append(str(HARNESS))

CUDA = sdtp_kernels.build_info()["cuda_available"]
NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
