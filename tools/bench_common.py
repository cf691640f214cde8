"""Shared by the training-step benchmarks: peak memory above a reset point, and the overrides of a
Qwen2.5-7B-shaped decoder (few layers) for the toy configs."""
from __future__ import annotations

import os
import sys

QWEN7B = ["model.vocab_size=152064", "model.hidden_size=3584", "model.ffn_hidden_size=18944",
          "model.num_attention_heads=28", "model.num_query_groups=4", "model.mrope_section=[16, 24, 24]",
          "model.tie_word_embeddings=false", "omni.vision.out_hidden_size=3584", "omni.audio.output_dim=3584",
          "precision.params_dtype=bf16"]


def qwen7b_overrides(layers: int | None) -> list[str]:
    return [*QWEN7B, f"model.num_layers={layers}"] if layers else []


def follow_live_tensors() -> None:
    """Re-execute once with every buffer over 64 KiB mapped afresh and unmapped on free, so the
    resident set follows live tensors instead of keeping freed heap memory (glibc reads the
    setting at start)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def status_kb(field: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak bytes above the level at ``reset()``: CUDA max_memory_allocated, else the process's
    peak resident set (restarted through /proc/self/clear_refs)."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.base = 0

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = status_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (status_kb("VmHWM") * 1024 - self.base) / 2**20
