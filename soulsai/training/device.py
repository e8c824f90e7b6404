"""Moving the learner's batches to its device (`training.device`).

On a CUDA device a batch goes through page-locked (pinned) host memory and is copied
asynchronously, once per update; image leaves travel as the replay holds them (uint8, a
quarter of float32's bytes) and are scaled on the device by the CNN. On the CPU nothing is
copied. `pin_memory` is only asked for where CUDA is available: a CPU-only torch has no pinned
memory to give.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Batch = torch.Tensor | Mapping[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """`batch` (a tensor, or leaves name -> tensor) on `device`."""
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        return _move(batch, device)
    return {name: _move(t, device) for name, t in batch.items()}


def _move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda" or not torch.cuda.is_available() or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
