"""Putting SDTP on one model instance and taking it off again; saving and loading its predictors."""
from __future__ import annotations

import bisect
import contextlib
import json
import os
from typing import Iterator, Union

from safetensors.torch import load_file, save_file
from torch import nn

from ..config import SDTPConfig
from ..predictor import SaliencyPredictor
from .families import check_model_config, family_of
from .layer import SDTPDecoderLayer
from .masks import SUPPORTED_ATTENTION
from .runtime import SDTPRuntime

CONFIG_FILE = "sdtp_config.json"
WEIGHTS_FILE = "sdtp_predictors.safetensors"
_RUNTIME = "_sdtp_runtime"


def _runtime(model: nn.Module) -> SDTPRuntime:
    runtime = getattr(model, _RUNTIME, None)
    if runtime is None:
        raise ValueError(f"this {type(model).__name__} has no SDTP; call apply_sdtp(model, config_or_dir) first")
    return runtime


def _wrappers(model: nn.Module) -> list[SDTPDecoderLayer]:
    return [m for m in family_of(model).decoder_layers(model) if isinstance(m, SDTPDecoderLayer)]


def sdtp_config(model: nn.Module) -> SDTPConfig:
    return _runtime(model).config


def sdtp_predictors(model: nn.Module) -> nn.ModuleList:
    """The model's predictors, stage 1 first (the same modules the model runs: train these)."""
    _runtime(model)
    return nn.ModuleList(w.predictor for w in _wrappers(model) if w.predictor is not None)


@contextlib.contextmanager
def sdtp_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Prefills inside run unpruned (decoding a cache that was pruned before still attends to its kept tokens).
    A model without SDTP is accepted and runs as it is."""
    runtime = getattr(model, _RUNTIME, None)
    if runtime is None:
        yield model
        return
    was, runtime.enabled = runtime.enabled, False
    try:
        yield model
    finally:
        runtime.enabled = was


def _read_saved(directory: str, model: nn.Module, num_layers: int) -> tuple[SDTPConfig, dict]:
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        saved = json.load(f)
    config = SDTPConfig.from_dict(saved["config"])
    hidden = model.config.hidden_size
    if saved["hidden_size"] != hidden:
        raise ValueError(
            f"the SDTP predictors in {directory} were made for hidden size {saved['hidden_size']}, "
            f"but this {type(model).__name__} has hidden size {hidden}"
        )
    stages = config.stage_layers(num_layers)
    if len(saved["stage_layers"]) != len(stages):
        raise ValueError(
            f"{directory} holds {len(saved['stage_layers'])} stage predictors (before layers {saved['stage_layers']}), "
            f"but its config on this {num_layers}-layer model gives {len(stages)} stages (before layers {stages})"
        )
    return config, load_file(os.path.join(directory, WEIGHTS_FILE))


def _load_weights(predictors: nn.ModuleList, tensors: dict, directory: str) -> None:
    # File keys are stage<s>.<param>, s from 1; ModuleList keys count from 0.
    state = {}
    for key, value in tensors.items():
        stage, _, name = key.partition(".")
        if not (stage.startswith("stage") and stage[5:].isdigit()):
            raise ValueError(f"unexpected tensor {key!r} in {os.path.join(directory, WEIGHTS_FILE)}")
        state[f"{int(stage[5:]) - 1}.{name}"] = value
    try:
        predictors.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the predictor weights in {directory} do not fit this model's predictors: {e}") from None


def apply_sdtp(model: nn.Module, config_or_dir: Union[SDTPConfig, str, os.PathLike]) -> nn.Module:
    """Patch this model instance (never its class) with SDTP and return it: fresh predictors for an SDTPConfig, the
    saved ones for a directory written by save_sdtp."""
    family = family_of(model)
    if getattr(model, _RUNTIME, None) is not None:
        raise ValueError("this model already has SDTP; call remove_sdtp(model) before applying it again")
    check_model_config(model.config)
    if model.config._attn_implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"SDTP supports the attention implementations {SUPPORTED_ATTENTION}, this model uses "
            f"{model.config._attn_implementation!r}"
        )
    layers = family.decoder_layers(model)
    if isinstance(config_or_dir, SDTPConfig):
        config, tensors = config_or_dir, None
    else:
        config, tensors = _read_saved(os.fspath(config_or_dir), model, len(layers))
    stage_layers = config.stage_layers(len(layers))
    width = config.predictor_width(model.config.hidden_size)
    predictors = nn.ModuleList()
    for index in stage_layers:
        weight = next(layers[index].parameters())
        predictors.append(SaliencyPredictor(model.config.hidden_size, width).to(weight.device, weight.dtype))
    if tensors is not None:
        _load_weights(predictors, tensors, os.fspath(config_or_dir))

    runtime = SDTPRuntime(model, family, config, stage_layers)
    for index in range(config.start_layer, len(layers)):
        stage = bisect.bisect_right(stage_layers, index)
        predictor = predictors[stage - 1] if index in stage_layers else None
        layers[index] = SDTPDecoderLayer(layers[index], stage, predictor, runtime)
    setattr(model, _RUNTIME, runtime)
    return model


def remove_sdtp(model: nn.Module) -> nn.Module:
    """Undo apply_sdtp: the original decoder layers come back and the predictors are dropped."""
    _runtime(model).close()
    layers = family_of(model).decoder_layers(model)
    for index, layer in enumerate(layers):
        if isinstance(layer, SDTPDecoderLayer):
            layers[index] = layer.layer
    delattr(model, _RUNTIME)
    return model


def save_sdtp(model: nn.Module, directory: Union[str, os.PathLike]) -> None:
    """Write the config (JSON) and the predictor weights (safetensors) that apply_sdtp(model, directory) loads."""
    runtime = _runtime(model)
    os.makedirs(directory, exist_ok=True)
    saved = {
        "config": runtime.config.to_dict(),
        "hidden_size": model.config.hidden_size,
        "stage_layers": runtime.stage_layers,
        "model_type": model.config.model_type,
    }
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(saved, f, indent=2)
    tensors = {
        f"stage{s}.{name}": value.detach().cpu().contiguous()
        for s, predictor in enumerate(sdtp_predictors(model), start=1)
        for name, value in predictor.state_dict().items()
    }
    save_file(tensors, os.path.join(directory, WEIGHTS_FILE))
