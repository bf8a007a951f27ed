import pytest
import torch

import sdtp_kernels

CUDA = sdtp_kernels.build_info()["cuda_available"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
