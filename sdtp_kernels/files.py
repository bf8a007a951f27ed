"""Writing files as a user expects them: safetensors' writer creates files readable by their owner only (0600),
whatever the umask; the files the commands write get the permissions the user's umask gives any other file."""
from __future__ import annotations

import os
from typing import Optional

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def respect_umask(path: str | os.PathLike) -> None:
    """Give `path` the permissions a newly created file gets under the current umask."""
    os.chmod(path, 0o666 & ~_umask())


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    respect_umask(path)
