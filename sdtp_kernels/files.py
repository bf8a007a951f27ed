"""Writing files as a user expects them: safetensors' writer creates files readable by their owner only (0600),
whatever the umask; the files the commands write get the permissions the user's umask gives any other file. JSON is
strict JSON: Python's NaN and Infinity are not JSON, and many readers refuse them."""
from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any, Optional

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


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float in it (nested in dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def utc_timestamp() -> str:
    """Now, as a result file records when it was measured: ISO 8601, UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def strict_json(value: Any, indent: Optional[int] = None) -> str:
    """`value` as strict JSON, a non-finite number written as null."""
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False)


def check_output_folder(path: str, flag: str = "--out") -> None:
    """Refuse an output folder that is a file, before any long work (loading a model) is done."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file; expected a folder (it is created if missing)")
