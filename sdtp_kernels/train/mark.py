"""`sdtp mark`: saliency of every record of a data file, streamed to safetensors shards (see `shards`)."""
from __future__ import annotations

import sys
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ..config import SDTPConfig
from ..hf.families import family_of
from .data import TEXT_FIELD, batches, read_examples
from .model import load_frozen_model
from .options import SaliencyOptions
from .saliency import token_saliency
from .schedule import describe_skipped, split_prunable
from .shards import ShardWriter


def mark(
    model_dir: str,
    data: str,
    out: str,
    config: SDTPConfig = SDTPConfig(),
    options: SaliencyOptions = SaliencyOptions(),
    batch_size: int = 8,
    records_per_shard: int = 1024,
    max_length: Optional[int] = None,
    dtype: str = "float32",
    device: Optional[str] = None,
    text_field: str = TEXT_FIELD,
) -> dict[str, Any]:
    """Mark `data` with `model_dir` at the stage layers of `config`; returns the index written to `out`."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_frozen_model(model_dir, dtype, device)
    metadata = {
        "stage_layers": config.stage_layers(len(family_of(model).decoder_layers(model))),
        "sdtp_config": config.to_dict(),
        **options.describe(),
        "model": model_dir,
        "data": data,
        "max_length": max_length,
    }
    examples, skipped = split_prunable(config, read_examples(
        data, model_dir, model.get_input_embeddings().num_embeddings, max_length, text_field))
    if not examples:
        raise ValueError(f"{data} holds no record to mark" + (f": skipped {describe_skipped(skipped)}" if skipped
                                                                else ""))
    if skipped:
        tqdm.write(f"sdtp mark: skipped {describe_skipped(skipped)}", file=sys.stderr)
    writer = ShardWriter(out, {**metadata, "skipped_records": [e.source for e in skipped]}, records_per_shard)
    with tqdm(total=len(examples), desc="sdtp mark", unit="record") as progress:
        for batch in batches(examples, batch_size):
            saliency = token_saliency(model, config, batch.to(device), options).cpu()
            for row in range(len(batch.records)):
                real = batch.attention_mask[row].bool()
                writer.add(batch.input_ids[row][real], saliency[:, row][:, real])
            progress.update(len(batch.records))
    return writer.close()
