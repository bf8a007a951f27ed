"""The saved-predictor format, read and written here only: `save_sdtp`, `apply_sdtp`, `sdtp train`, `sdtp eval` and
the reference model all go through this module (docs/ARCHITECTURE.md §5.3).

A predictor directory holds
- `sdtp_config.json`: {"config": the SDTPConfig fields, "hidden_size", "stage_layers", "model_type"};
- `sdtp_predictors.safetensors`: `stage<s>.<parameter>` for s = 1..S (norm_weight, fc1.weight, fc1.bias,
  fc2.weight, fc2.bias of each stage's SaliencyPredictor);
- `train_options.json` (optional): the options `sdtp train` ran with, among them the saliency it was marked with.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import os
import re
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from .config import SDTPConfig
from .files import save_safetensors, strict_json
from .predictor import SaliencyPredictor

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
        saved_width, width = self.state["0.fc1.weight"].shape[0], (config or self.config).predictor_width(hidden_size)
        if saved_width != width:
            raise ValueError(f"{self.directory} holds predictors {saved_width} wide, but the schedule asks for "
                             f"predictor_hidden = {width}; the width of saved predictors cannot be changed")

    def saliency_options(self) -> Optional[dict[str, Any]]:
        """The saliency options training marked with (SaliencyOptions fields), None when unknown."""
        return (self.training or {}).get("saliency") or None


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    # Upcast first: isfinite has no float8 kernel.
    bad = sorted(name for name, value in tensors.items() if not value.float().isfinite().all())
    if bad:
        raise ValueError(f"{where}: predictor weights {bad} hold NaN or infinite values")


_STAGE_KEY = re.compile(r"stage([1-9][0-9]*)\.(.+)")


def key_stage(key: str) -> Optional[int]:
    """The stage s of a weights-file key `stage<s>.<parameter>` (s >= 1, no leading zero); None for any other key."""
    match = _STAGE_KEY.fullmatch(key)
    return int(match.group(1)) if match else None


def _stage_state(tensors: dict[str, torch.Tensor], path: str, hidden_size: int, width: int,
                 num_stages: int) -> dict[str, torch.Tensor]:
    """The ModuleList state dict ("0.fc1.weight" is stage 1's) of file tensors `stage<s>.<parameter>`, checked to be
    exactly the floating-point parameters of `num_stages` predictors of this hidden size and width."""
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in SaliencyPredictor(hidden_size, width).state_dict().items()}
    state = {}
    for key, value in tensors.items():
        stage = key_stage(key)
        if stage is None:
            raise ValueError(f"unexpected tensor {key!r} in {path}: expected stage<s>.<parameter>, s >= 1")
        name = key.partition(".")[2]
        if stage > num_stages or name not in shapes:
            raise ValueError(f"unexpected tensor {key!r} in {path}: {num_stages} stage(s), each with "
                             f"{sorted(shapes)}")
        if not value.is_floating_point() or tuple(value.shape) != shapes[name]:
            raise ValueError(f"{path}: tensor {key!r} is {value.dtype} of shape {list(value.shape)}; expected a "
                             f"floating-point tensor of shape {list(shapes[name])} (hidden size {hidden_size}, "
                             f"predictor width {width})")
        state[f"{stage - 1}.{name}"] = value
    missing = [f"stage{s + 1}.{name}" for s in range(num_stages) for name in shapes if f"{s}.{name}" not in state]
    if missing:
        raise ValueError(f"{path} lacks the tensor(s) {missing}")
    return state


def _read_json(path: str) -> Any:
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None


def _check_saved(saved: Any, path: str) -> None:
    if not isinstance(saved, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(saved).__name__}")
    missing = sorted({"config", "hidden_size", "stage_layers"} - set(saved))
    if missing:
        raise ValueError(f"{path} lacks the field(s) {missing}")
    if not isinstance(saved["config"], dict):
        raise ValueError(f"{path}: 'config' must be an object of SDTPConfig fields, got {saved['config']!r}")
    size, layers = saved["hidden_size"], saved["stage_layers"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{path}: 'hidden_size' must be an int >= 1, got {size!r}")
    if not isinstance(layers, list) or not layers or any(
            isinstance(layer, bool) or not isinstance(layer, int) or layer < 1 for layer in layers):
        raise ValueError(f"{path}: 'stage_layers' must be a non-empty list of decoder layer indices >= 1, got "
                         f"{layers!r}")
    if not isinstance(saved.get("model_type"), (str, type(None))):
        raise ValueError(f"{path}: 'model_type' must be a string or null, got {saved['model_type']!r}")


def read_predictors(directory: PathLike) -> SavedPredictors:
    """A predictor directory, checked: its files exist and parse, its config is valid, its weights are exactly the
    finite parameters of one predictor per stage of its hidden size and width."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = os.fspath(directory)
    config_path, weights_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} is not an SDTP predictor directory: {os.path.basename(path)} is "
                                    "missing (write one with save_sdtp or `sdtp train`)")
    saved = _read_json(config_path)
    _check_saved(saved, config_path)
    config = SDTPConfig.from_dict(saved["config"])
    try:
        tensors = load_file(weights_path)
    except SafetensorError as error:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from None
    state = _stage_state(tensors, weights_path, saved["hidden_size"], config.predictor_width(saved["hidden_size"]),
                         len(saved["stage_layers"]))
    _check_finite(tensors, weights_path)
    training = None
    options_path = os.path.join(directory, TRAIN_OPTIONS_FILE)
    if os.path.isfile(options_path):
        training = _read_json(options_path)
        if not isinstance(training, dict) or not isinstance(training.get("saliency") or {}, dict):
            raise ValueError(f"{options_path} must hold a JSON object whose 'saliency' (if any) is an object")
    return SavedPredictors(
        directory=directory,
        config=config,
        hidden_size=saved["hidden_size"],
        stage_layers=saved["stage_layers"],
        model_type=saved.get("model_type"),
        state=state,
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
    """Write the config and the weights of `predictors` (stage 1 first) that `read_predictors` reads back, refusing
    what it would refuse (among them non-finite weights: a file that loads but scores NaN would prune at random
    without a word). Both files are written under temporary names first, so a failed write leaves the directory as
    it was."""
    directory = os.fspath(directory)
    saved = {"config": config.to_dict(), "hidden_size": operator.index(hidden_size),
             "stage_layers": [operator.index(layer) for layer in stage_layers], "model_type": model_type}
    _check_saved(saved, f"save to {directory}")
    if len(predictors) != len(saved["stage_layers"]):
        raise ValueError(f"save to {directory}: {len(predictors)} predictors for {len(saved['stage_layers'])} "
                         "stage layers")
    tensors = {  # copies: safetensors refuses tensors that share memory (one module given for two stages)
        f"stage{s}.{name}": value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for s, predictor in enumerate(predictors, start=1)
        for name, value in predictor.state_dict().items()
    }
    _stage_state(tensors, f"save to {directory}", saved["hidden_size"], config.predictor_width(saved["hidden_size"]),
                 len(predictors))
    _check_finite(tensors, f"save to {directory}")
    text = strict_json(saved, indent=2)
    os.makedirs(directory, exist_ok=True)
    weights_path, config_path = (os.path.join(directory, name) for name in (WEIGHTS_FILE, CONFIG_FILE))
    try:
        save_safetensors(tensors, weights_path + ".tmp")
        with open(config_path + ".tmp", "w") as f:
            f.write(text)
        os.replace(weights_path + ".tmp", weights_path)
        os.replace(config_path + ".tmp", config_path)
    finally:
        for path in (weights_path, config_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + ".tmp")
