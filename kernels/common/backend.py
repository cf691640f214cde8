"""Which implementation runs an op: the Triton kernels or the pure-torch chunked path.

`auto` picks Triton when it can run here: CUDA tensors, or CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1, read by Triton when the kernel modules are imported, so it must
be set before the first Triton call). Anywhere else it picks the chunked torch path, which has
the same API and results. `backend="triton"` / `"torch"` force one.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch

from megatron_omni.kernels.common.validation import fail

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")


def interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on tensors of `device`, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        from megatron_omni.kernels.common import triton_common  # imported lazily: Triton reads TRITON_INTERPRET here

        if triton_common.INTERPRETED:
            return None
        return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing kernels"
    return f"Triton kernels do not run on {device.type} tensors"


def resolve_backend(requested: str, device: torch.device) -> Literal["triton", "torch"]:
    if requested not in BACKENDS:
        fail("backend", f"must be one of {BACKENDS}, got {requested!r}")
    if requested == "torch":
        return "torch"
    reason = triton_unavailable_reason(device)
    if reason is None:
        return "triton"
    if requested == "triton":
        raise RuntimeError(f"backend='triton' cannot run: {reason}")
    return "torch"


def implementation(backend: str, device: torch.device, triton_module: str, torch_module: str) -> ModuleType:
    """The module holding an op's primitives for the resolved backend (Triton modules are only
    imported when they will run)."""
    name = triton_module if resolve_backend(backend, device) == "triton" else torch_module
    return importlib.import_module(name)


@dataclass(frozen=True)
class TileShape:
    """A program handles `rows` token rows and walks the vocabulary `cols` columns at a time."""

    rows: int
    cols: int
    num_warps: int


def tile_shape(n_cols: int, interpreted: bool) -> TileShape:
    """GPU: one row per program and wide vocab tiles keep every SM streaming, and the running
    statistics stay in registers. Interpreter: its cost grows with programs x loop iterations,
    not elements, so a program takes 64 rows and wide tiles."""
    cols = 1 << max(4, (n_cols - 1).bit_length())
    if interpreted:
        return TileShape(rows=64, cols=min(cols, 1024), num_warps=4)
    return TileShape(rows=1, cols=min(cols, 4096), num_warps=8)
