"""Pure-torch reference of `topk_tail_kl`: the dense log-probabilities collapsed onto the teacher's
top-k tokens plus a tail bucket, differentiated by autograd (the tests' oracle, the benchmarks'
eager baseline)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from megatron_omni.kernels.common.dense_math import log_probs, logsumexp
from megatron_omni.kernels.kl.reference import kl_reference


def topk_tail_kl_reference(
    student_logits: Tensor,
    teacher_logits: Tensor,
    k: int,
    mode: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-token divergence of the distributions collapsed onto the teacher's top-k tokens (ties to
    the lower id) plus a tail bucket, computed in `dtype` (see kernels/topk_kl/op.py). The teacher
    is a constant. The tail's log-probability is the logsumexp of the log-probabilities outside the
    top-k; with k >= the vocabulary there is no tail and this is `kl_reference`."""
    real_t = teacher_logits.detach()
    real_t = real_t[..., :vocab_size] if vocab_size is not None else real_t
    log_q = log_probs(student_logits, temperature, vocab_size, dtype)
    log_p = log_probs(teacher_logits.detach(), temperature, vocab_size, dtype)
    top = torch.sort(real_t.to(torch.float64), dim=-1, descending=True, stable=True).indices[..., :k]
    if k < real_t.shape[-1]:
        in_top = torch.zeros_like(log_q, dtype=torch.bool).scatter_(-1, top, True)

        def collapse(log_x: Tensor) -> Tensor:
            tail = logsumexp(log_x.masked_fill(in_top, -math.inf), -1, keepdim=True)
            return torch.cat([log_x.gather(-1, top), tail], dim=-1)

        log_q, log_p = collapse(log_q), collapse(log_p)
    # Normalised log-probabilities are logits of their own distribution: kl_reference applies.
    return kl_reference(log_q, log_p, mode, beta, 1.0, None, dtype)
