"""The reference model's retrieval task as harness tasks, written on first use (no download):

- `sdtp_retrieval`: generate_until, exact match of the one answer token (what `sdtp eval` measures, through the
  harness);
- `sdtp_retrieval_mc`: multiple choice by log-likelihood, the answer among the values the context holds.

Both read the same local JSONL of the task's held-out prompts, as text in the reference model's tokenizer
(`<bos> f14 <key> k25 v54 ... <query> k23`); the YAMLs point at it by absolute path."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from ..eval.prompts import read_task
from ..models import reference_model
from ..tasks.retrieval import RetrievalTask
from ..version import __version__

TASKS = ("sdtp_retrieval", "sdtp_retrieval_mc")
DEFAULT_COUNT = 500
_COMMON = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{prompt}}}}"
"""
_GENERATION = _COMMON + """doc_to_target: "{{{{answer}}}}"
output_type: generate_until
generation_kwargs:
  until: ["<eos>"]
  max_gen_toks: 1
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
_CHOICE = _COMMON + """doc_to_target: "{{{{gold}}}}"
doc_to_choice: "{{{{choices}}}}"
output_type: multiple_choice
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def default_folder() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("SDTP_LM_EVAL_TASKS") or os.path.join(cache, "sdtp_kernels", "lm_eval_tasks"))


def _records(count: int) -> list[dict]:
    config, seed = read_task(str(reference_model() / "task.json"))
    task = RetrievalTask(config, seed=seed)
    names = task.token_names()
    records = []
    for example in task.examples(0, count):
        values = sorted({t for t in example.input_ids if config.value_offset <= t < config.filler_offset})
        answer = example.answer[0]
        records.append({"prompt": task.decode(example.input_ids), "answer": names[answer],
                        "choices": [names[v] for v in values], "gold": values.index(answer)})
    return records


def task_folder(folder: Optional[str | os.PathLike] = None, count: int = DEFAULT_COUNT) -> Path:
    """The folder holding the two task YAMLs and their JSONL (the first `count` held-out prompts), written if it
    does not hold them yet; pass it to the harness as --include_path (or TaskManager(include_path=...))."""
    folder = Path(folder) if folder is not None else default_folder()
    data = (folder / "sdtp_retrieval.jsonl").resolve()
    task_file = reference_model() / "task.json"
    # What the files were written from: another task, package or folder (the YAMLs name the JSONL by its absolute
    # path) writes them again.
    written_from = {"count": count, "task": hashlib.sha256(task_file.read_bytes()).hexdigest(),
                    "version": __version__, "data": str(data)}
    stamp = folder / "complete.json"
    if stamp.exists() and json.loads(stamp.read_text()) == written_from:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(data, "w") as f:
        for record in _records(count):
            f.write(json.dumps(record) + "\n")
    for name, template in zip(TASKS, (_GENERATION, _CHOICE)):
        (folder / f"{name}.yaml").write_text(f"task: {name}\n" + template.format(data=data))
    stamp.write_text(json.dumps(written_from))
    return folder
