"""What this installation was built with and can run on."""
import torch

from . import _C
from .version import __version__


def build_info() -> dict:
    """version, torch, cpu (always True), cuda_compiled, cuda_archs, cuda_available (a device is visible)."""
    return {
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": True,
        "cuda_compiled": bool(_C.cuda_compiled),
        "cuda_archs": [a for a in _C.cuda_archs.replace(" ", ";").split(";") if a],
        "cuda_available": bool(_C.cuda_compiled) and torch.cuda.is_available(),
    }
