"""The schedule a served SDTP model runs (docs/ARCHITECTURE.md §7.1): the predictors and config saved in the model
folder, with load-time overrides from the model config's `sdtp_<field>` attributes (vLLM's `hf_overrides`)."""
from __future__ import annotations

import dataclasses
import os

from ..config import SDTPConfig
from ..predictor_file import SavedPredictors, read_predictors
from .architectures import OVERRIDE_PREFIX


def overrides_of(hf_config) -> dict:
    """The SDTPConfig fields that `hf_config` overrides (hf_overrides={"sdtp_keep_ratio": 0.5}, say)."""
    fields = {f.name for f in dataclasses.fields(SDTPConfig)}
    found = {key[len(OVERRIDE_PREFIX):]: value for key, value in vars(hf_config).items()
             if key.startswith(OVERRIDE_PREFIX)}
    unknown = sorted(OVERRIDE_PREFIX + key for key in set(found) - fields)
    if unknown:
        raise ValueError(f"SDTP: unknown schedule override(s) {unknown}; the overridable fields are "
                         f"{sorted(OVERRIDE_PREFIX + f for f in fields)}")
    return found


def served_schedule(model_dir: str, hf_config) -> tuple[SavedPredictors, SDTPConfig]:
    """The predictors in `model_dir` (an `sdtp export` folder) and the schedule they run, checked against the
    model's hidden size and layer count."""
    if not os.path.isdir(model_dir):
        raise ValueError(f"SDTP: the model {model_dir!r} is not a local folder; serve the folder `sdtp export` "
                         "wrote")
    saved = read_predictors(model_dir)
    config = saved.config.replace(**overrides_of(hf_config))
    saved.check_fits(hf_config.hidden_size, hf_config.num_hidden_layers, type(hf_config).__name__, config)
    return saved, config
