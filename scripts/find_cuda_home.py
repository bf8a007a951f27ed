"""Prints the CUDA toolkit root (used by setup.py and the CMake build). An `nvcc` on PATH may be a wrapper script
that execs the real compiler: it is followed, since torch would otherwise take the wrapper's folder and fail to
link."""
import os
import re
import shutil


def find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    with open(nvcc, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!"):
        found = re.search(rb"(/\S+)/bin/nvcc", head)
        if found:
            return found.group(1).decode()
    return os.path.dirname(os.path.dirname(nvcc))


if __name__ == "__main__":
    print(find_cuda_home() or "")
