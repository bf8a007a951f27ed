"""A training log reduced to what a reader of a results folder wants: how long, where it started, where it ended,
and the mean of the last steps (one step's loss is noisy). Written beside the predictors as train_summary.json."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from ..files import strict_json

SUMMARY_FILE = "train_summary.json"
LAST_STEPS = 50


def summarize(records: Sequence[dict[str, Any]], last: int = LAST_STEPS) -> dict[str, Any]:
    """{"steps", "first", "last", "mean_last_<n>"} of per-step log records (dicts of numbers, one has "step"); a
    mean is over the numbers a field holds (a non-finite value is logged as None), None without any."""
    if not records:
        return {"steps": 0}
    tail = records[-last:]
    names = [name for name, value in tail[-1].items()
             if name != "step" and (value is None or isinstance(value, (int, float)))]
    numbers = {name: [r[name] for r in tail if isinstance(r.get(name), (int, float))] for name in names}
    means = {name: sum(values) / len(values) if values else None for name, values in numbers.items()}
    return {"steps": records[-1]["step"], "first": records[0], "last": records[-1], f"mean_last_{len(tail)}": means}


def write_summary(directory: str, log_file: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Summarise the JSON Lines log `log_file` of `directory` into SUMMARY_FILE, with `extra` fields beside."""
    with open(os.path.join(directory, log_file)) as f:
        records = [json.loads(line) for line in f if line.strip()]
    summary = {**extra, **summarize(records)}
    with open(os.path.join(directory, SUMMARY_FILE), "w") as f:
        f.write(strict_json(summary, indent=2) + "\n")
    return summary
