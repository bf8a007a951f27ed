"""`sdtp mark`: saliency of every record of a data file, streamed to safetensors shards (see `shards`). One process,
or several under torchrun: they mark batches in turn (the frozen model replicated, or sharded with `shard`), and
process 0 gathers and writes them in file order."""
from __future__ import annotations

import itertools
import sys
from typing import Any, Iterator, Optional

from tqdm.auto import tqdm

from ..config import SDTPConfig
from ..files import check_output_folder
from ..hf.families import family_of
from .activation_checkpointing import checkpoint_decoder_layers
from .data import TEXT_FIELD, Batch, batches, bos_token_id
from .examples import ExampleIndex
from .model import load_frozen_model
from .options import SaliencyOptions
from .processes import Processes
from .saliency import token_saliency
from .schedule import describe_skipped
from .sharding import loading_device, shard_frozen_model
from .shards import ShardWriter


def _rounds(all_batches: Iterator[Batch], world: int) -> Iterator[list[Batch]]:
    """The batches in groups of `world`: one for each process (the last group may be short)."""
    while group := list(itertools.islice(all_batches, world)):
        yield group


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
    attention: Optional[str] = None,
    checkpointing: bool = False,
    shard: bool = False,
) -> Optional[dict[str, Any]]:
    """Mark `data` with `model_dir` at the stage layers of `config`; returns the index written to `out` (None in
    the processes of a torchrun job but the first). `attention`, `checkpointing`, `shard`: as for training."""
    for name, value in (("batch_size", batch_size), ("records_per_shard", records_per_shard),
                        ("max_length", 1 if max_length is None else max_length)):
        if value < 1:
            raise ValueError(f"mark: {name} must be >= 1, got {value}")
    processes = Processes(device)
    try:
        return _mark(processes, model_dir, data, out, config, options, batch_size, records_per_shard, max_length,
                     dtype, text_field, attention, checkpointing, shard)
    finally:
        processes.close()


def _mark(processes: Processes, model_dir: str, data: str, out: str, config: SDTPConfig, options: SaliencyOptions,
          batch_size: int, records_per_shard: int, max_length: Optional[int], dtype: str, text_field: str,
          attention: Optional[str], checkpointing: bool, shard: bool) -> Optional[dict[str, Any]]:
    device = processes.device
    check_output_folder(out)
    model = load_frozen_model(model_dir, dtype, loading_device(device, shard), attention)
    if checkpointing:
        checkpoint_decoder_layers(model)
    if shard:
        shard_frozen_model(model, device)
    metadata = {
        "stage_layers": config.stage_layers(len(family_of(model).decoder_layers(model))),
        "sdtp_config": config.to_dict(),
        **options.describe(),
        "model": model_dir,
        "data": data,
        "max_length": max_length,
    }
    examples = ExampleIndex(data, model_dir, model.get_input_embeddings().num_embeddings, config, max_length,
                            text_field, bos_token_id(model.config))
    skipped = examples.skipped
    if not examples:
        raise ValueError(f"{data} holds no record to mark" + (f": skipped {describe_skipped(skipped)}" if skipped
                                                                else ""))
    if not processes.main:
        writer = None
    else:
        if skipped:
            tqdm.write(f"sdtp mark: skipped {describe_skipped(skipped)}", file=sys.stderr)
        writer = ShardWriter(out, {**metadata, "skipped_records": skipped}, records_per_shard)
    with tqdm(total=len(examples), desc="sdtp mark", unit="record", disable=not processes.main) as progress:
        for group in _rounds(batches(examples, batch_size), processes.world):
            # Every process runs a forward each round (a sharded model gathers its weights collectively): one
            # without a batch of its own repeats the first and drops the result.
            mine = processes.rank < len(group)
            batch = group[processes.rank if mine else 0]
            saliency = token_saliency(model, config, batch.to(device), options).cpu()
            rows = []
            for row in range(len(batch.records) if mine else 0):
                real = batch.attention_mask[row].bool()
                rows.append((batch.input_ids[row][real], saliency[:, row][:, real]))
            for process_rows in processes.gather(rows):  # in rank order: file order
                for input_ids, row_saliency in process_rows:
                    writer.add(input_ids, row_saliency)
            progress.update(sum(len(b.records) for b in group))
    index = writer.close() if writer is not None else None
    processes.wait_for_all()  # no process returns before process 0 has written the index (a train may follow)
    return index
