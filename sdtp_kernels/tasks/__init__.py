"""Synthetic tasks used to train and evaluate the project's own reference model (no weights can be downloaded)."""
from .retrieval import (
    RetrievalExample,
    RetrievalTask,
    RetrievalTaskConfig,
    read_jsonl,
    write_jsonl,
)

__all__ = ["RetrievalExample", "RetrievalTask", "RetrievalTaskConfig", "read_jsonl", "write_jsonl"]
