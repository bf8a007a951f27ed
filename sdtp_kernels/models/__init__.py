"""Models that install with the package (package data): the reference model `reference/`, a 12-layer hidden-128
Llama trained on the synthetic retrieval task by `sdtp reference-model`, with its task description and its trained
SDTP predictors in `reference/sdtp/`."""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def reference_model() -> Path:
    """The reference model's directory (config.json, model.safetensors, task.json, sdtp/), wherever the package is."""
    path = Path(str(importlib.resources.files(__name__).joinpath("reference")))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the reference model is missing from this installation ({path}); reinstall "
                                "sdtp_kernels with its package data")
    return path
