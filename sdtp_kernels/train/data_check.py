"""`sdtp train --dry-run` / `sdtp mark --dry-run`: read and check a whole data file against a model's config in
seconds (no weights loaded): every record parsed and validated as training reads it, what would be skipped, and
the lengths."""
from __future__ import annotations

from typing import Any, Optional

from ..config import SDTPConfig
from ..hf.model_dir import local_model_dir
from .data import IGNORE_INDEX, TEXT_FIELD, read_examples
from .schedule import describe_skipped, split_prunable


def _stats(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(values), "mean": round(sum(values) / len(values), 1), "max": max(values)}


def check_data(model_dir: str, data: str, config: SDTPConfig, max_length: Optional[int] = None,
               batch_size: Optional[int] = None, text_field: str = TEXT_FIELD) -> dict[str, Any]:
    """A report of `data` as training and marking would read it; a bad record raises with its file and line."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(local_model_dir(model_dir), local_files_only=True)
    usable, skipped = split_prunable(config, read_examples(data, model_dir, model_config.vocab_size, max_length,
                                                                text_field))
    report = {
        "data": data,
        "records": len(usable) + len(skipped),
        "usable_records": len(usable),
        "skipped_records": [e.source for e in skipped],
        "tokens_per_record": _stats([len(e.input_ids) for e in usable]),
        "prompt_tokens_per_record": _stats([e.prompt_length for e in usable]),
        "labelled_tokens": sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in usable),
        "stage_layers": config.stage_layers(model_config.num_hidden_layers),
    }
    if skipped:
        report["skipped"] = describe_skipped(skipped)
    if batch_size is not None:
        report["batches_per_epoch"] = len(usable) // batch_size
        if len(usable) < batch_size:
            report["error"] = f"fewer usable records ({len(usable)}) than one batch ({batch_size})"
    return report
