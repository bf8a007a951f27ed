"""Host-to-device copies that do not wait. A copy from pageable host memory to a CUDA device synchronises the stream
(the host waits for all queued work before it goes on); a copy from pinned memory is queued like a kernel."""
from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; from the CPU to a CUDA device through pinned memory, without synchronising the stream
    (the caching host allocator keeps the pinned copy until the transfer is done)."""
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
