"""Local model folders: every command that takes --model loads through here, so a wrong path is one clear line at
once, never a Hub lookup or an unpickling error from deep inside transformers."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def local_model_dir(path: str | os.PathLike, flag: str = "--model") -> str:
    """`path` if it is a folder holding config.json (what save_pretrained writes), else FileNotFoundError."""
    path = os.fspath(path)
    expected = "a local model folder (config.json and the weights, as save_pretrained writes them)"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path}: no such folder; expected {expected}. Hub ids are not downloaded: "
                                "fetch the model first (e.g. huggingface-cli download) and pass its folder")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{flag} {path} is a file; expected {expected}: pass the folder that holds it")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{flag} {path} holds no config.json; expected {expected}")
    return path


def load_causal_lm(path: str | os.PathLike, dtype: torch.dtype = torch.float32, flag: str = "--model",
                   **kwargs: Any) -> nn.Module:
    """AutoModelForCausalLM from a checked local folder, never from the network."""
    path = local_model_dir(path, flag)
    from transformers import AutoModelForCausalLM  # seconds to import: only once the path is known to be good

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, **kwargs)
