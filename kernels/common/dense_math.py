"""The materialising pieces the ops' references are written in: log_softmax over the whole
[tokens x vocab] tensor and per-row KL / mixture terms, differentiable by autograd.

Masked vocabulary entries (logit -inf, probability 0) are exact here, values and gradients: a
term whose weight is 0 is 0 (0 log 0 = 0) and gets zero gradient. torch's own logsumexp /
logaddexp return -inf over all -inf inputs but a NaN gradient (exp(-inf - -inf)), and
`F.kl_div` returns NaN at a -inf target: the helpers below replace such lanes before the
non-linear arithmetic ("double where"), since a NaN computed in an unselected lane of
`torch.where` still poisons the gradient.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def log_probs(logits: Tensor, temperature: float, vocab_size: int | None, dtype: torch.dtype) -> Tensor:
    """log softmax(logits / T) over the real vocabulary (the first `vocab_size` columns), in `dtype`."""
    real = logits[..., :vocab_size] if vocab_size is not None else logits
    return F.log_softmax(real.to(dtype) / temperature, dim=-1)


def has_mass(log_x: Tensor) -> Tensor:
    return log_x > -math.inf


def logsumexp(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """torch.logsumexp, -inf with zero gradient where every input along `dim` is -inf."""
    some = has_mass(x).any(dim, keepdim=True)
    out = torch.logsumexp(torch.where(some, x, 0.0), dim, keepdim=True)
    out = torch.where(some, out, -math.inf)
    return out if keepdim else out.squeeze(dim)


def kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(A || B) per row from log-probabilities; entries where A has no mass contribute 0."""
    return (log_a.exp() * torch.where(has_mass(log_a), log_a - log_b, 0.0)).sum(-1)


def log_mixture(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    """log(beta P + (1 - beta) Q), a log-sum-exp of the weighted log-probabilities (never the log
    of probabilities that underflowed)."""
    return logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)


def entropy_rows(log_p: Tensor) -> Tensor:
    """-sum p log p per row; entries without mass contribute 0."""
    return -(log_p.exp() * torch.where(has_mass(log_p), log_p, 0.0)).sum(-1)
