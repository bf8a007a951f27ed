"""The saved-predictor format, read and written here only: `save_sdtp`, `apply_sdtp`, `sdtp train`, `sdtp eval` and
the reference model all go through this module (docs/ARCHITECTURE.md §5.3).

A predictor directory holds
- `sdtp_config.json`: {"config": the SDTPConfig fields, "hidden_size", "stage_layers", "model_type"};
- `sdtp_predictors.safetensors`: `stage<s>.<parameter>` for s = 1..S (norm_weight, fc1.weight, fc1.bias,
  fc2.weight, fc2.bias of each stage's SaliencyPredictor);
- `train_options.json` (optional): the options `sdtp train` ran with, among them the saliency it was marked with.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from .config import SDTPConfig
from .files import save_safetensors

CONFIG_FILE = "sdtp_config.json"
WEIGHTS_FILE = "sdtp_predictors.safetensors"
TRAIN_OPTIONS_FILE = "train_options.json"

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class SavedPredictors:
    directory: str
    config: SDTPConfig
    hidden_size: int
    stage_layers: list[int]
    model_type: Optional[str]
    state: dict[str, torch.Tensor]
    """State dict of the stage predictors as an nn.ModuleList: "0.fc1.weight" is stage 1's."""
    training: Optional[dict[str, Any]]
    """train_options.json, if the directory has one."""

    def check_fits(
        self, hidden_size: int, num_layers: int, model_name: str, config: Optional[SDTPConfig] = None
    ) -> None:
        """Refuse a model these predictors were not made for: another hidden size, stage layers other than the ones
        the schedule (`config`, by default the saved one) gives on a model of `num_layers` decoder layers (each
        predictor was trained on the hidden states entering its own layer), or a schedule whose predictor width is
        not the saved one."""
        if self.hidden_size != hidden_size:
            raise ValueError(
                f"the SDTP predictors in {self.directory} were made for hidden size {self.hidden_size}, "
                f"but this {model_name} has hidden size {hidden_size}"
            )
        stages = (config or self.config).stage_layers(num_layers)
        if list(self.stage_layers) != stages:
            raise ValueError(
                f"{self.directory} holds {len(self.stage_layers)} stage predictors, trained before layers "
                f"{self.stage_layers}, but the schedule on this {num_layers}-layer model puts its stages before "
                f"layers {stages}"
            )
        fc1 = self.state.get("0.fc1.weight")  # absent only from a damaged file, which the strict load names
        width = (config or self.config).predictor_width(hidden_size)
        if fc1 is not None and fc1.shape[0] != width:
            raise ValueError(f"{self.directory} holds predictors {fc1.shape[0]} wide, but the schedule asks for "
                             f"predictor_hidden = {width}; the width of saved predictors cannot be changed")

    def saliency_options(self) -> Optional[dict[str, Any]]:
        """The saliency options training marked with (SaliencyOptions fields), None when unknown."""
        return (self.training or {}).get("saliency") or None


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    bad = sorted(name for name, value in tensors.items() if value.is_floating_point() and not value.isfinite().all())
    if bad:
        raise ValueError(f"{where}: predictor weights {bad} hold NaN or infinite values")


def key_stage(key: str) -> Optional[int]:
    """The stage s of a weights-file key `stage<s>.<parameter>` (s >= 1); None for any other key."""
    stage, _, name = key.partition(".")
    if not (stage.startswith("stage") and stage[5:].isdigit() and name):
        return None
    number = int(stage[5:])
    return number if number >= 1 else None


def _stage_keys(tensors: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    # File keys are stage<s>.<param>, s from 1; ModuleList keys count from 0.
    state = {}
    for key, value in tensors.items():
        stage = key_stage(key)
        if stage is None:
            raise ValueError(f"unexpected tensor {key!r} in {path}: expected stage<s>.<parameter>, s >= 1")
        state[f"{stage - 1}.{key.partition('.')[2]}"] = value
    return state


def read_predictors(directory: PathLike) -> SavedPredictors:
    """A predictor directory, checked: its files exist, its config is valid, its weights are finite."""
    from safetensors.torch import load_file

    directory = os.fspath(directory)
    config_path, weights_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} is not an SDTP predictor directory: {os.path.basename(path)} is "
                                    "missing (write one with save_sdtp or `sdtp train`)")
    with open(config_path) as f:
        saved = json.load(f)
    missing = sorted({"config", "hidden_size", "stage_layers"} - set(saved))
    if missing:
        raise ValueError(f"{config_path} lacks the field(s) {missing}")
    tensors = load_file(weights_path)
    _check_finite(tensors, weights_path)
    training = None
    options_path = os.path.join(directory, TRAIN_OPTIONS_FILE)
    if os.path.isfile(options_path):
        with open(options_path) as f:
            training = json.load(f)
    return SavedPredictors(
        directory=directory,
        config=SDTPConfig.from_dict(saved["config"]),
        hidden_size=int(saved["hidden_size"]),
        stage_layers=list(saved["stage_layers"]),
        model_type=saved.get("model_type"),
        state=_stage_keys(tensors, weights_path),
        training=training,
    )


def write_predictors(
    directory: PathLike,
    config: SDTPConfig,
    hidden_size: int,
    stage_layers: Sequence[int],
    model_type: Optional[str],
    predictors: Sequence[nn.Module],
) -> None:
    """Write the config and the weights of `predictors` (stage 1 first) that `read_predictors` reads back. Refuses
    non-finite weights: a file that loads but scores NaN would prune at random without a word."""
    directory = os.fspath(directory)
    tensors = {
        f"stage{s}.{name}": value.detach().cpu().contiguous()
        for s, predictor in enumerate(predictors, start=1)
        for name, value in predictor.state_dict().items()
    }
    _check_finite(tensors, f"save to {directory}")
    os.makedirs(directory, exist_ok=True)
    saved = {"config": config.to_dict(), "hidden_size": hidden_size, "stage_layers": list(stage_layers),
             "model_type": model_type}
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(saved, f, indent=2)
    save_safetensors(tensors, os.path.join(directory, WEIGHTS_FILE))
