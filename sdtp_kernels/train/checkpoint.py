"""Training checkpoints: one file, replaced atomically, holding everything a resumed run needs to continue exactly."""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Sequence

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(out: str) -> str:
    return os.path.join(out, CHECKPOINT_FILE)


def save_checkpoint(out: str, state: dict[str, Any]) -> None:
    """Write, flush to disk, then rename, so that an interrupted save (or a crash of the machine) leaves the previous
    checkpoint intact."""
    path = checkpoint_path(out)
    with open(path + ".tmp", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def load_checkpoint(out: str, identity: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The checkpoint in `out`, checked to hold `keys` (what the caller reads of it) and to belong to a run with this
    `identity` (the settings that fix what the run computes: schedule, seed, global batch, data, losses, optimiser)."""
    path = checkpoint_path(out)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: {out} holds no checkpoint ({CHECKPOINT_FILE}) to continue from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # a file cut short or not a checkpoint
        raise ValueError(f"--resume: {path} is not a readable checkpoint ({e})") from None
    missing = [key for key in ("identity", *keys) if not isinstance(state, dict) or key not in state]
    if missing:  # a file torch reads that another command or program wrote
        raise ValueError(f"--resume: {path} is not a checkpoint of this command (it lacks {', '.join(missing)})")
    # A checkpoint written before a setting joined the identity cannot be checked for it: said, not refused (its
    # training would be lost).
    unchecked = [key for key in identity if key not in state["identity"]]
    if unchecked:
        warnings.warn(f"--resume: the checkpoint in {out} predates the check of {', '.join(unchecked)}; resuming "
                      "without checking them", stacklevel=2)
    differ = {key: (state["identity"][key], value) for key, value in identity.items()
              if key in state["identity"] and state["identity"][key] != value}
    if differ:
        details = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in differ.items())
        raise ValueError(f"--resume: the checkpoint in {out} belongs to a different run ({details})")
    return state
