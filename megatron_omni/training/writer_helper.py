"""What the checkpoint helper process runs first (`megatron_omni.training.checkpoint.start_writer_helper`).

A module of its own, on the standard library only: the helper is a freshly spawned interpreter,
and unpickling its initializer imports the module that defines it. Defined in checkpoint.py it
would import torch and megatron-core there (seconds of CPU for every rank, on the way to its
first save) for a process that only serves a queue.
"""
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def shelter_helper(trainer_pid: int) -> None:
    """Out of the trainer's session and signals, dead with it."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # elsewhere an orphaned helper stays until it is killed
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != trainer_pid:  # the trainer died before the line above took effect
        os._exit(1)
