"""Argument checks shared by the ops: every error names the argument at fault."""
from __future__ import annotations

import math
from typing import NoReturn

import torch
from torch import Tensor

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fail(field: str, message: str) -> NoReturn:
    raise ValueError(f"{field}: {message}")


def check_logits(name: str, logits: object) -> Tensor:
    """A [..., vocab] floating tensor with at least one leading dim."""
    if not isinstance(logits, Tensor):
        fail(name, f"must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in LOGIT_DTYPES:
        fail(name, f"dtype {logits.dtype} is not supported (float32, bfloat16 or float16)")
    if logits.dim() < 2:
        fail(name, f"must have shape [..., vocab] with at least 2 dims, got {tuple(logits.shape)}")
    if logits.shape[-1] == 0:
        fail(name, "has an empty vocabulary dim")
    return logits


def check_pair(student: Tensor, teacher: Tensor) -> None:
    """Student and teacher logits must align token by token and column by column."""
    if student.shape != teacher.shape:
        fail("teacher_logits", f"shape {tuple(teacher.shape)} differs from student_logits {tuple(student.shape)}")
    if student.device != teacher.device:
        fail("teacher_logits", f"is on {teacher.device}, student_logits on {student.device}")


def check_temperature(temperature: float) -> float:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        fail("temperature", f"must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def as_rows(logits: Tensor) -> Tensor:
    """[..., V] -> [rows, V] with unit column stride (a view whenever the layout allows one)."""
    rows = logits.reshape(-1, logits.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()
