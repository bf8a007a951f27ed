"""What a training resume compares of its inputs, cheaply and independently of where the files now are: digests of
the frozen model, of the training examples and of the marking (docs/ARCHITECTURE.md §5)."""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from .examples import ExampleIndex
from .shards import SaliencyShards

_SAMPLE = 4096  # values of the input embeddings compared bit for bit


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """Every parameter's name, shape and dtype, and a strided sample of the input embeddings' values: another
    architecture or another checkpoint of the same one. Take it before sharding and before SDTP adds predictors: it is
    then the same on every device and for any number of processes."""
    layout = ";".join(f"{name}:{tuple(p.shape)}:{p.dtype}" for name, p in model.named_parameters())
    weight = model.get_input_embeddings().weight.detach().reshape(-1)
    sample = weight[:: max(1, weight.numel() // _SAMPLE)][:_SAMPLE].contiguous().cpu()
    return _digest(layout.encode(), sample.view(torch.uint8).numpy().tobytes())


def examples_fingerprint(examples: ExampleIndex) -> str:
    """The examples' token and prompt lengths in order, and the tokens and labels of the first, middle and last one
    (read again from the file): another data file, tokenizer, text field or max_length."""
    n = len(examples)
    sampled = [examples[i] for i in sorted({0, n // 2, n - 1}) if n]
    tokens = json.dumps([[list(e.input_ids), list(e.labels)] for e in sampled])
    return _digest(examples.lengths.tobytes(), examples.prompt_lengths.tobytes(), tokens.encode())


def marking_fingerprint(marking: SaliencyShards) -> str:
    """The marking's index (its shards, records, statistics and settings): another marking of the data."""
    return _digest(json.dumps(marking.index, sort_keys=True).encode())
