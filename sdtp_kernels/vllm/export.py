"""`sdtp export`: a model folder vLLM serves with SDTP as it is (docs/ARCHITECTURE.md §7.1).

OUT holds the model's files (weights and tokenizer linked, or copied with --copy), its config.json with the SDTP
architecture (e.g. SDTPLlamaForCausalLM), and the predictors with their schedule (`sdtp_config.json`,
`sdtp_predictors.safetensors`, §5.3). transformers still reads it as the plain model (`model_type` is unchanged),
so `apply_sdtp(AutoModelForCausalLM.from_pretrained(OUT), OUT)` runs the same predictors."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Optional

from ..arguments import HelpFormatter
from ..hf.model_dir import local_model_dir
from ..predictor_file import CONFIG_FILE, TRAIN_OPTIONS_FILE, WEIGHTS_FILE, read_predictors
from .architectures import OVERRIDE_PREFIX, SDTP_ARCHITECTURES, SERVED

_PREDICTOR_FILES = (CONFIG_FILE, WEIGHTS_FILE, TRAIN_OPTIONS_FILE)


def _host_architecture(config: dict, model_dir: str) -> str:
    architectures = config.get("architectures") or []
    if len(architectures) != 1 or architectures[0] not in SDTP_ARCHITECTURES:
        if architectures and architectures[0] in SERVED:
            raise ValueError(f"--model {model_dir} is already an SDTP export ({architectures[0]}); pass the "
                             "original model folder")
        raise ValueError(f"--model {model_dir}: config.json names the architecture(s) {architectures}; vLLM SDTP "
                         f"serves one of {sorted(SDTP_ARCHITECTURES)}")
    return architectures[0]


def _place(source: str, target: str, copy: bool) -> None:
    if copy:
        shutil.copy2(source, target)
    else:
        os.symlink(os.path.abspath(source), target)


def export(model_dir: str, predictors_dir: str, out: str, copy: bool = False,
           schedule: Optional[dict] = None) -> str:
    """Write OUT (which must not exist, or be empty) and return it. `schedule`: SDTPConfig fields that replace the
    saved ones in OUT's predictor config (the same predictors must still fit, e.g. keep_ratio)."""
    model_dir = local_model_dir(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    host = _host_architecture(config, model_dir)
    saved = read_predictors(predictors_dir)
    sdtp_config = saved.config.replace(**(schedule or {}))
    saved.check_fits(int(config["hidden_size"]), int(config["num_hidden_layers"]), host, sdtp_config)
    stray = sorted(key for key in config if key.startswith(OVERRIDE_PREFIX))
    if stray:
        raise ValueError(f"--model {model_dir}: config.json already holds {stray}, keys the vLLM plugin reads as "
                         "load-time overrides of the schedule; remove them")
    # vLLM loads *.safetensors when a folder has any, and OUT will (the predictors): .bin weights would be ignored.
    if not any(name.endswith(".safetensors") and name not in _PREDICTOR_FILES for name in os.listdir(model_dir)):
        raise ValueError(f"--model {model_dir} holds no *.safetensors weights; load it and save it again with "
                         "transformers' save_pretrained, which writes safetensors (vLLM would read only the "
                         "predictors' safetensors file of the export and leave the model's .bin weights unloaded)")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"--out {out} exists and is not an empty folder; pass a new folder")
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(model_dir)):
        source = os.path.join(model_dir, name)
        # The model's own config is rewritten below; predictor files come from --predictors only.
        if name == "config.json" or name in _PREDICTOR_FILES or not os.path.isfile(source):
            continue
        _place(source, os.path.join(out, name), copy)
    for name in _PREDICTOR_FILES:
        source = os.path.join(saved.directory, name)
        if os.path.isfile(source) and name != CONFIG_FILE:
            shutil.copy2(source, os.path.join(out, name))
    with open(os.path.join(saved.directory, CONFIG_FILE)) as f:
        predictor_config = json.load(f)
    predictor_config["config"] = sdtp_config.to_dict()
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        json.dump(predictor_config, f, indent=2)
    config["architectures"] = [SDTP_ARCHITECTURES[host]]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    read_predictors(out)  # what vLLM will read, checked now rather than at engine start
    return out


def _schedule_options(args: argparse.Namespace) -> dict:
    return {name: value for name, value in (("keep_ratio", args.keep_ratio),) if value is not None}


def _run(args: argparse.Namespace) -> int:
    out = export(args.model, args.predictors, args.out, copy=args.copy, schedule=_schedule_options(args))
    saved = read_predictors(out)
    print(f"sdtp export: wrote {out} (keep_ratio {saved.config.keep_ratio}, stages before layers "
          f"{saved.stage_layers}); serve it with `vllm serve {out}` (prefix caching and chunked prefill stay off "
          "for SDTP models)")
    return 0


def add_commands(commands) -> None:
    parser = commands.add_parser(
        "export", help="write a model folder that vLLM serves with SDTP (and apply_sdtp loads)",
        description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="local model folder (config.json, weights, tokenizer)")
    parser.add_argument("--predictors", required=True, help="predictor folder written by save_sdtp or sdtp train")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--copy", action="store_true", help="copy the model's files instead of linking them")
    parser.add_argument("--keep-ratio", type=float, help="replace the saved keep_ratio (default: the saved one)")
    parser.set_defaults(run=_run)

