"""Putting SDTP on one model instance and taking it off again; saving and loading its predictors."""
from __future__ import annotations

import bisect
import contextlib
import numbers
import os
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from ..config import SDTPConfig
from ..predictor import SaliencyPredictor
from ..predictor_file import read_predictors, write_predictors
from .families import family_of, layer_windows
from .layer import SDTPDecoderLayer
from .masks import SUPPORTED_ATTENTION
from .runtime import SDTPRuntime
from .scorers import Scorer, make_scorer

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


@contextlib.contextmanager
def protected_tail(model: nn.Module, tails: Sequence[int]) -> Iterator[nn.Module]:
    """Inside, a prefill of the patched model keeps the last `tails[b]` real tokens of row b at every stage (on top
    of the schedule's protected tokens), so that their logits come back: a pruned prefill returns the logits of the
    tokens that reach the last layer, right-aligned, so row b's tail is its last `tails[b]` columns."""
    runtime = _runtime(model)
    tails = list(tails)  # once: a generator would be spent by the check
    if any(isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0 for t in tails):
        raise ValueError(f"protected_tail: tails must be ints >= 0, got {tails}")
    was, runtime.protected_tail = runtime.protected_tail, [int(t) for t in tails]  # numpy ints too
    try:
        yield model
    finally:
        runtime.protected_tail = was


def prefill_prunes(model: nn.Module, lengths: Sequence[int], tails: Optional[Sequence[int]] = None) -> bool:
    """Whether a prefill of the patched model over rows of these real lengths (and protected tails) removes any
    token. Only then do its logits come back right-aligned; a prefill that removes none runs the unpatched forward,
    whose logits keep the input's layout (the same thing for left padding, not for right padding)."""
    lengths = [int(n) for n in lengths]
    return _runtime(model).prunes(lengths, [0] * len(lengths) if tails is None else [int(t) for t in tails])


def apply_sdtp(
    model: nn.Module,
    config_or_dir: Union[SDTPConfig, str, os.PathLike],
    scorer: Union[str, Scorer] = "predictor",
    **schedule,
) -> nn.Module:
    """Patch this model instance (never its class) with SDTP and return it: fresh predictors for an SDTPConfig, the
    saved ones for a directory written by save_sdtp. `scorer` ranks each stage's tokens: "predictor" (the
    predictors), "random", "attention" (see `scorers`), or a Scorer instance. `schedule`: SDTPConfig fields that
    override the given or saved ones (e.g. keep_ratio=0.7; saved predictors need the same stage layers)."""
    family = family_of(model)
    if getattr(model, _RUNTIME, None) is not None:
        raise ValueError("this model already has SDTP; call remove_sdtp(model) before applying it again")
    if model.config._attn_implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"SDTP supports the attention implementations {SUPPORTED_ATTENTION}, this model uses "
            f"{model.config._attn_implementation!r}"
        )
    layers = family.decoder_layers(model)
    windows = layer_windows(model.config, len(layers))  # a layer type SDTP cannot represent fails here
    if isinstance(config_or_dir, SDTPConfig):
        config, saved = config_or_dir.replace(**schedule), None
    elif not isinstance(config_or_dir, (str, os.PathLike)):
        raise TypeError("apply_sdtp: argument 'config_or_dir' must be an SDTPConfig or a directory written by "
                        f"save_sdtp, got {type(config_or_dir).__name__}")
    else:
        saved = read_predictors(config_or_dir)
        config = saved.config.replace(**schedule)
        saved.check_fits(model.config.hidden_size, len(layers), type(model).__name__, config)
    scorer = make_scorer(scorer)
    stage_layers = config.stage_layers(len(layers))
    width = config.predictor_width(model.config.hidden_size)
    predictors = nn.ModuleList()
    for index in stage_layers:
        weight = _floating_parameter(layers[index], model)
        predictors.append(SaliencyPredictor(model.config.hidden_size, width).to(weight.device, weight.dtype))
    if saved is not None:
        try:
            predictors.load_state_dict(saved.state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"the predictor weights in {saved.directory} do not fit this model's predictors: {e}") \
                from None

    runtime = SDTPRuntime(model, family, config, stage_layers, scorer)
    for index in range(config.start_layer, len(layers)):
        stage = bisect.bisect_right(stage_layers, index)
        predictor = predictors[stage - 1] if index in stage_layers else None
        layers[index] = SDTPDecoderLayer(layers[index], index, stage, predictor, windows[index], runtime)
    setattr(model, _RUNTIME, runtime)
    return model


def _floating_parameter(layer: nn.Module, model: nn.Module) -> torch.Tensor:
    """Where, and in which dtype, the predictor before `layer` runs: the layer's first floating-point parameter (the
    integer weights of a quantized layer say neither), else the input embeddings'."""
    return next((p for p in layer.parameters() if p.is_floating_point()), model.get_input_embeddings().weight)


def remove_sdtp(model: nn.Module) -> nn.Module:
    """Undo apply_sdtp: the original decoder layers come back and the predictors are dropped."""
    _runtime(model).close()
    layers = family_of(model).decoder_layers(model)
    for index, layer in enumerate(layers):
        if isinstance(layer, SDTPDecoderLayer):
            layers[index] = layer.layer
    delattr(model, _RUNTIME)
    return model


def set_scorer(model: nn.Module, scorer: Union[str, Scorer], **options) -> Scorer:
    """Rank the stages' tokens of this patched model with `scorer` (a name with its options, or an instance) from
    now on; returns the scorer it replaces. Kept counts and protected tokens stay the schedule's."""
    return _runtime(model).set_scorer(make_scorer(scorer, **options))


def save_sdtp(model: nn.Module, directory: Union[str, os.PathLike]) -> None:
    """Write the config (JSON) and the predictor weights (safetensors) that apply_sdtp(model, directory) loads."""
    runtime = _runtime(model)
    write_predictors(directory, runtime.config, model.config.hidden_size, runtime.stage_layers,
                     model.config.model_type, sdtp_predictors(model))
