"""The single-process world the converters run in (gloo, world size 1, TP = PP = 1)."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist

from megatron_omni.convert.errors import ConversionError
from megatron_omni.parallel import apply_cpu_compat, destroy_parallel, initialize_parallel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def single_process_world() -> Iterator[None]:
    """Start (or reuse) a one-process group with megatron's TP = PP = 1 groups.

    The full model is built in this one process; dist_checkpointing's global-shape storage then
    makes the saved checkpoint loadable at any TP/PP. A world the caller started is reused and
    left running.
    """
    started = not dist.is_initialized()
    if started:
        apply_cpu_compat()
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    elif dist.get_world_size() != 1:
        raise ConversionError(
            f"checkpoint conversion runs in a single process (world size is {dist.get_world_size()}); "
            "run the tool with python, not torchrun"
        )
    initialize_parallel(1, 1)
    try:
        yield
    finally:
        if started:
            destroy_parallel()
            dist.destroy_process_group()
