"""Builds the native extension sdtp_kernels._C: CPU kernels always, CUDA kernels when nvcc and a CUDA build of
torch are present (SDTP_CUDA=auto|0|1; TORCH_CUDA_ARCH_LIST defaults to 8.0;9.0 plus PTX)."""
import glob
import importlib.util
import os

from setuptools import setup


def load_find_cuda_home():
    spec = importlib.util.spec_from_file_location(
        "find_cuda_home", os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "find_cuda_home.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_cuda_home


cuda_home = load_find_cuda_home()()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402  (CUDA_HOME must be set before torch.utils.cpp_extension reads it)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def build_cuda():
    mode = os.environ.get("SDTP_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"SDTP_CUDA must be auto, 0 or 1, got {mode!r}")
    possible = torch.version.cuda is not None and cuda_home is not None
    if mode == "1" and not possible:
        raise SystemExit(
            f"SDTP_CUDA=1 but the CUDA part cannot be built: torch CUDA={torch.version.cuda}, CUDA_HOME={cuda_home}"
        )
    return mode == "1" or (mode == "auto" and possible)


def extension():
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard is the one torch asks for (C++20 from torch 2.10 on). -fopenmp: at::parallel_for is inlined
    # into our code and runs serially without it.
    cxx = ["-O3", "-fopenmp"]
    link = ["-fopenmp"]
    if not build_cuda():
        return CppExtension("sdtp_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    macros = ["-DSDTP_WITH_CUDA", f'-DSDTP_CUDA_ARCHS="{archs}"']
    nvcc = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr", *macros]
    return CUDAExtension(
        "sdtp_kernels._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp")),
        extra_compile_args={"cxx": cxx + macros, "nvcc": nvcc},
        extra_link_args=link,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
