"""This process's place in a torchrun job, shared by training and marking, and what a step measured of it."""
from __future__ import annotations

import os
import resource
import time
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist


class Processes:
    """This process's place in a torchrun job (or a lone process): rank, world size, device."""

    def __init__(self, device: Optional[str]):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":  # each process of a torchrun job its own GPU
            device = f"cuda:{local_rank}"
        self.device = torch.device(device)
        if world > 1 and self.device.type == "cuda" and self.device.index != local_rank:
            raise ValueError(f"--device {device}: each process of a torchrun job takes the GPU of its LOCAL_RANK "
                             f"(this one: cuda:{local_rank}); pass --device cuda")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = world > 1 and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether every element of `value` is finite in every process (each must stop when one does, or the
        others would wait)."""
        return bool(self.mean(torch.isfinite(value.detach()).all().float().reshape(1)).item() == 1.0)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order, in process 0; an empty list in the others."""
        if not self.distributed:
            return [value]
        gathered = [None] * self.world if self.main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered or []

    def from_main(self, read: Callable[[], Any]) -> Any:
        """What `read()` returns (or raises) in process 0, in every process: a file that only process 0 sees (a
        checkpoint on the first machine of a multi-node job) reaches them all."""
        if not self.distributed:
            return read()
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = (read(), None)
            except Exception as error:  # every process raises it, none waits for a broadcast that never comes
                box[0] = (None, error)
        dist.broadcast_object_list(box, src=0, device=self.device)
        value, error = box[0]
        if error is not None:
            raise error
        return value

    def wait_for_all(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


MEASURED_FIELDS = ("tokens_per_s", "peak_mem_mib")
"""What `StepMeter` adds to a training log line: measurements of the machine, which differ between identical runs."""


class StepMeter:
    """Tokens per second of a step (all processes' real tokens over the slowest process's time) and the peak
    memory of the processes so far (the largest: GPU memory allocated on a GPU, resident memory on the CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._start = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def _peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux

    def stop(self, tokens: torch.Tensor, processes: "Processes") -> dict[str, float]:
        seconds = time.perf_counter() - self._start
        total = processes.mean(tokens.float().reshape(1)).item() * processes.world
        slowest, peak = processes.max(torch.tensor([seconds, self._peak_mib()], device=self.device)).tolist()
        return {"tokens_per_s": total / slowest, "peak_mem_mib": peak}
