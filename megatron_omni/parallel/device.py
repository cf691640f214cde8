"""The one place that decides where a training step's tensors live.

Under NCCL (CUDA machines) every rank owns one GPU, chosen by `init_distributed` from
``LOCAL_RANK``; under gloo (CPU) everything stays on the CPU. Batches, sampling generators,
pipeline buffers, tensors handed to collectives, rewards, advantages and metrics are all made on
`step_device()`, so a step never mixes devices and never copies back and forth on its own.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def step_device() -> torch.device:
    """This rank's GPU under NCCL, the CPU under gloo; without a process group (tools, single
    scoring runs) the current GPU when there is one."""
    if dist.is_initialized():
        uses_gpu = dist.get_backend() == "nccl"
    else:
        uses_gpu = torch.cuda.is_available()
    return torch.device("cuda", torch.cuda.current_device()) if uses_gpu else torch.device("cpu")


def resolve_device(configured: str | None) -> torch.device:
    """A configured device name (``cpu``, ``cuda:1``), or `step_device()` when it is null."""
    return torch.device(configured) if configured else step_device()
