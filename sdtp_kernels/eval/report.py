"""The quality report: the results JSON (`results_json`), its Markdown table and its bar chart."""
from __future__ import annotations

import math
import os
import platform
from typing import Any, Optional

import torch

from ..files import utc_timestamp
from .quality import METHODS


def machine() -> dict[str, Any]:
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def results_json(pruning: dict[str, Any], spearman_result: Optional[dict[str, Any]], config: dict[str, Any],
                 command: str) -> dict[str, Any]:
    """The quality.json layout: {"accuracy": {"none": a, method: {ratio: a}}, "agreement": ..., ...}."""
    methods = [m for m in METHODS if m in pruning]

    def table(field: str, with_none: bool = False) -> dict[str, Any]:
        out = {"none": pruning["none"][field]} if with_none else {}
        out.update({m: {r: s[field] for r, s in pruning[m].items()} for m in methods})
        return out

    return {
        "accuracy": table("accuracy", with_none=True),
        "agreement": {"top1": table("top1_agreement"), "kl": table("kl")},
        "answer_kept": table("answer_kept"),
        "kept_fraction": {r: s["kept_fraction"] for r, s in pruning[methods[0]].items()} if methods else {},
        "spearman": spearman_result,
        "config": config,
        "command": command,
        "machine": machine(),
        "date": utc_timestamp(),
    }


def plot(results: dict[str, Any], path: str) -> None:
    """Bar charts: answer accuracy, top-1 agreement and answer survival per method and keep ratio."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m in results["accuracy"]]
    ratios = list(results["accuracy"][methods[0]]) if methods else []
    panels = [("answer accuracy", results["accuracy"], True), ("top-1 agreement with unpruned",
              results["agreement"]["top1"], False)]
    if all(v is not None for m in methods for v in results["answer_kept"][m].values()):
        panels.append(("answer token survives all stages", results["answer_kept"], False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    width = 0.8 / max(1, len(methods))
    colors = {"sdtp": "tab:green", "random": "tab:gray", "attention": "tab:orange"}
    for ax, (title, data, with_none) in zip(axes, panels):
        for i, method in enumerate(methods):
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(ratios))]
            values = [data[method][r] for r in ratios]
            bars = ax.bar(xs, values, width, label=method, color=colors.get(method))
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        if with_none:
            ax.axhline(data["none"], color="k", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xticks(range(len(ratios)), [f"keep_ratio {r}" for r in ratios])
        ax.set_ylim(0, 1.08)
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)  # below, off the bars
    config = results.get("config", {})
    fig.suptitle(f"SDTP quality, {config.get('prompts', '?')} held-out prompts, stages before layers "
                 f"{config.get('stage_layers', '?')}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def number(value: Optional[float], digits: int = 3) -> str:
    """A result for a table: "n/a" where it is undefined (NaN, infinite, or None as the JSON holds it)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the results (for notes and the README)."""
    acc, top1, kl, kept = (results["accuracy"], results["agreement"]["top1"], results["agreement"]["kl"],
                           results["answer_kept"])
    lines = ["| method | keep_ratio | accuracy | top-1 agreement | KL (nats) | answer token kept |",
             "|---|---|---|---|---|---|",
             f"| none | 1.0 | {number(acc['none'])} | 1.000 | 0.0000 | 1.000 |"]
    for method in METHODS:
        for ratio in acc.get(method, {}):
            k = kept[method][ratio]
            lines.append(f"| {method} | {ratio} | {number(acc[method][ratio])} | {number(top1[method][ratio])} | "
                         f"{number(kl[method][ratio], 4)} | {'-' if k is None else number(k)} |")
    sp = results.get("spearman")
    if sp:
        seeds = sp["untrained_per_seed"]
        spread = f"{number(min(seeds))} to {number(max(seeds))}" if "n/a" not in map(number, seeds) else "n/a"
        lines.append("")
        lines.append(f"Spearman(predictor score, marked saliency), {sp['prompts']} held-out prompts: trained "
                     f"{number(sp['trained'])} (per stage {', '.join(number(v) for v in sp['trained_per_stage'])}), "
                     f"untrained {number(sp['untrained'])} (mean of {len(seeds)} initialisations: {spread})")
    return "\n".join(lines)


