"""Pure-torch reference of `vocab_parallel_kl`: plain log_softmax over the whole [tokens x vocab]
tensor, differentiated by autograd. It defines the op's meaning (the tests' oracle, computed in
float64, and the benchmarks' eager baseline) and materialises everything the fused paths avoid."""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_omni.kernels.common.dense_math import kl_rows, log_mixture, log_probs


def kl_reference(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mode: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-token forward KL(P_T||P_S), reverse KL(P_S||P_T) or generalised JSD (GKD / TRL form),
    over the unsharded vocabulary, computed in `dtype`."""
    log_q = log_probs(student_logits, temperature, vocab_size, dtype)
    log_p = log_probs(teacher_logits, temperature, vocab_size, dtype)
    if mode == "forward" or (mode == "jsd" and beta == 0.0):
        return kl_rows(log_p, log_q)
    if mode == "reverse" or (mode == "jsd" and beta == 1.0):
        return kl_rows(log_q, log_p)
    if mode != "jsd":
        raise ValueError(f"mode: unknown {mode!r}")
    log_m = log_mixture(log_p, log_q, beta)
    return beta * kl_rows(log_p, log_m) + (1.0 - beta) * kl_rows(log_q, log_m)
