import pytest
import torch

import sdtp_kernels

CUDA = sdtp_kernels.build_info()["cuda_available"]
NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
