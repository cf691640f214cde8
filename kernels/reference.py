"""Pure-torch references of the fused ops: plain log_softmax over the whole [tokens x vocab]
tensor, differentiated by autograd. They define the ops' meaning (the tests' oracle and the
benchmarks' eager baseline) and materialise everything the fused paths avoid."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _log_probs(logits: Tensor, temperature: float, vocab_size: int | None, dtype: torch.dtype) -> Tensor:
    real = logits[..., :vocab_size] if vocab_size is not None else logits
    return F.log_softmax(real.to(dtype) / temperature, dim=-1)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(A || B) per row from log-probabilities (0 * log 0 = 0)."""
    return F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)


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
    log_q = _log_probs(student_logits, temperature, vocab_size, dtype)
    log_p = _log_probs(teacher_logits, temperature, vocab_size, dtype)
    if mode == "forward" or (mode == "jsd" and beta == 0.0):
        return _kl(log_p, log_q)
    if mode == "reverse" or (mode == "jsd" and beta == 1.0):
        return _kl(log_q, log_p)
    if mode != "jsd":
        raise ValueError(f"mode: unknown {mode!r}")
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def logprob_entropy_reference(
    logits: Tensor,
    target_ids: Tensor,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Per-token log-prob of `target_ids` and entropy of softmax(logits / T)."""
    log_p = _log_probs(logits, temperature, vocab_size, dtype)
    logprob = log_p.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return logprob, entropy


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
    the lower id) plus a tail bucket, computed in `dtype` (see kernels/topk_kl.py). The teacher is
    a constant. The tail's log-probability is the logsumexp of the log-probabilities outside the
    top-k; with k >= the vocabulary there is no tail and this is `kl_reference`."""
    real_t = teacher_logits.detach()
    real_t = real_t[..., :vocab_size] if vocab_size is not None else real_t
    log_q = _log_probs(student_logits, temperature, vocab_size, dtype)
    log_p = _log_probs(teacher_logits.detach(), temperature, vocab_size, dtype)
    top = torch.sort(real_t.to(torch.float64), dim=-1, descending=True, stable=True).indices[..., :k]
    if k < real_t.shape[-1]:
        in_top = torch.zeros_like(log_q, dtype=torch.bool).scatter_(-1, top, True)

        def collapse(log_x: Tensor) -> Tensor:
            tail = log_x.masked_fill(in_top, -math.inf).logsumexp(-1, keepdim=True)
            return torch.cat([log_x.gather(-1, top), tail], dim=-1)

        log_q, log_p = collapse(log_q), collapse(log_p)
    # Normalised log-probabilities are logits of their own distribution: kl_reference applies.
    return kl_reference(log_q, log_p, mode, beta, 1.0, None, dtype)
