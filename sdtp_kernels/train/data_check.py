"""`sdtp train --dry-run` / `sdtp mark --dry-run`: read and check a whole data file against a model's config in
seconds (no weights loaded): every record parsed and validated as training reads it, what would be skipped, and
the lengths."""
from __future__ import annotations

from typing import Any, Optional

from ..config import SDTPConfig
from ..hf.model_dir import local_model_dir
from .data import TEXT_FIELD, bos_token_id
from .examples import ExampleIndex
from .schedule import describe_skipped


def _stats(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(values), "mean": round(sum(values) / len(values), 1), "max": max(values)}


def check_data(model_dir: str, data: str, config: SDTPConfig, max_length: Optional[int] = None,
               batch_size: Optional[int] = None, text_field: str = TEXT_FIELD) -> dict[str, Any]:
    """A report of `data` as training and marking would read it; a bad record raises with its file and line."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(local_model_dir(model_dir), local_files_only=True)
    usable = ExampleIndex(data, model_dir, model_config.vocab_size, config, max_length, text_field,
                          bos_token_id(model_config))
    report = {
        "data": data,
        "records": len(usable) + len(usable.skipped),
        "usable_records": len(usable),
        "skipped_records": usable.skipped,
        "tokens_per_record": _stats(list(usable.lengths)),
        "prompt_tokens_per_record": _stats(list(usable.prompt_lengths)),
        "labelled_tokens": usable.labelled_tokens,
        "stage_layers": config.stage_layers(model_config.num_hidden_layers),
    }
    if usable.skipped:
        report["skipped"] = describe_skipped(usable.skipped)
    if batch_size is not None:
        report["batches_per_epoch"] = len(usable) // batch_size
    if not usable:  # marking refuses this too, whatever the batch size
        report["error"] = "no usable record" + (" (every record skipped)" if usable.skipped else "")
    elif batch_size is not None and len(usable) < batch_size:
        report["error"] = f"fewer usable records ({len(usable)}) than one batch ({batch_size})"
    return report
