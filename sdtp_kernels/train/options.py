"""The options of marking and training, apart from the code that runs them (the command line reads them without
loading transformers)."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional

from ..config import SDTPConfig

NORMALIZATIONS = ("zscore", "maxabs", "none")


@dataclasses.dataclass(frozen=True)
class SaliencyOptions:
    absolute: bool = False
    normalization: str = "zscore"
    """zscore: (s - mean) / std; maxabs: s / max |s|; none: raw. Statistics per row and stage over ranked tokens."""

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"saliency normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")

    def describe(self) -> dict[str, str]:
        """What a marking holds, written next to it."""
        value = "|sum_d(dT/dx * x)|" if self.absolute else "-sum_d(dT/dx * x)"
        return {
            "saliency": value + ", T = mean LM loss of the row's labelled tokens, x = the stage layer's input",
            "sign": "absolute" if self.absolute else "signed (higher = removing the token raises the loss more)",
            "normalization": self.normalization,
        }

    @classmethod
    def from_description(cls, description: dict[str, str]) -> "SaliencyOptions":
        return cls(absolute=description["sign"] == "absolute", normalization=description["normalization"])


TASK_LOSSES = ("lm", "kl")


@dataclasses.dataclass(frozen=True)
class LossOptions:
    task: str = "lm"
    """lm: the LM loss of the pruned forward on the labelled tokens; kl: KL from the unpruned model's predictions."""
    task_weight: float = 1.0
    mse_weight: float = 1.0
    rank_weight: float = 1.0
    ratio_weight: float = 1.0
    tau: float = 1.0  # Gumbel-softmax temperature
    rank_pairs: int = 16384  # per row and stage: all candidate pairs up to this many, sampled beyond

    def __post_init__(self) -> None:
        if self.task not in TASK_LOSSES:
            raise ValueError(f"the task loss must be one of {TASK_LOSSES}, got {self.task!r}")
        if not 0 < self.tau < math.inf:
            raise ValueError(f"tau must be a finite number > 0, got {self.tau}")
        if self.rank_pairs < 1:
            raise ValueError(f"rank_pairs must be >= 1, got {self.rank_pairs}")
        for name in ("task_weight", "mse_weight", "rank_weight", "ratio_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")


LR_SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ATTENTIONS = ("sdpa", "eager")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    model: str
    data: str
    out: str
    sdtp: SDTPConfig = SDTPConfig()
    loss: LossOptions = LossOptions()
    saliency: Optional[SaliencyOptions] = None
    """How each batch is marked on the fly (None: the defaults). With `saliency_dir`: None, or the marking's own."""
    saliency_dir: Optional[str] = None
    """A marking written by `sdtp mark` of the same data; None: mark each batch as it is trained on."""
    batch_size: int = 8  # per process
    max_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"  # cosine decay to 0 at max_steps after the warm-up, or constant
    max_grad_norm: float = 1.0  # 0: no clipping
    save_every: int = 100  # 0: checkpoint at the end only
    resume: bool = False
    seed: int = 0
    max_length: Optional[int] = None
    text_field: str = "text"  # the field of text records (a record with input_ids uses them, its text ignored)
    dtype: str = "float32"  # of the frozen model (half precision: its forward under autocast); predictors: float32
    device: Optional[str] = None  # default: this process's GPU if there is one, else the CPU
    attention: Optional[str] = None  # the frozen model's attention implementation (None: the model's default)
    checkpointing: bool = False  # activation checkpointing of the frozen decoder layers
    shard: bool = False  # shard the frozen model across the torchrun processes (FSDP)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        for name in ("batch_size", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every < 0 or self.warmup_steps < 0:
            raise ValueError("save_every and warmup_steps must be >= 0")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 (or None), got {self.max_length}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (0 <= self.weight_decay < math.inf and self.max_grad_norm >= 0):
            raise ValueError(f"need a finite weight_decay >= 0 and max_grad_norm >= 0, got "
                             f"weight_decay={self.weight_decay}, max_grad_norm={self.max_grad_norm}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.attention not in (None, *ATTENTIONS):
            raise ValueError(f"attention must be one of {ATTENTIONS} or None, got {self.attention!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)
