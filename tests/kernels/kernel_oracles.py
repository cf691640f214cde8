"""Oracles and input makers shared by the kernel tests: torch autograd through the materialising
references, in float64 so the oracle's own rounding stays far below the tolerances."""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_omni.kernels import kl_reference, logprob_entropy_reference, topk_tail_kl_reference

KL_ATOL = 5e-5
GRAD_ATOL = 1e-6


def make_logits(shape, seed: int, scale: float = 1.0, dtype=torch.float32) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def with_extremes(logits: Tensor, seed: int, columns: int) -> Tensor:
    """Give every other row two logits near +1e4 and three at -1e4 (at the same columns for every
    tensor made with the same seed), so probabilities concentrate on a few huge logits."""
    gen = torch.Generator().manual_seed(seed)
    out = logits.clone()
    for row in range(0, out.shape[0], 2):
        cols = torch.randperm(columns, generator=gen)[:5]
        out[row, cols[:2]] = 1.0e4 + out[row, cols[:2]]
        out[row, cols[2:]] = -1.0e4
    return out


def kl_oracle(student, teacher, *, mode, beta=0.5, temperature=1.0, vocab_size=None, row_mask=None,
              weights=None, teacher_grad=False):
    """(per-token loss, d sum(w * loss) / d student, d ... / d teacher or None), float64."""
    s = student.detach().double().requires_grad_()
    t = teacher.detach().double().requires_grad_(teacher_grad)
    loss = kl_reference(s, t, mode, beta, temperature, vocab_size, dtype=torch.float64)
    if row_mask is not None:
        loss = loss * row_mask
    total = (loss * weights).sum() if weights is not None else loss.sum()
    total.backward()
    return loss.detach(), s.grad, t.grad if teacher_grad else None


def logprob_oracle(logits, targets, *, temperature=1.0, vocab_size=None, row_mask=None, w_logprob=None, w_entropy=None):
    x = logits.detach().double().requires_grad_()
    logprob, entropy = logprob_entropy_reference(x, targets.long(), temperature, vocab_size, dtype=torch.float64)
    if row_mask is not None:
        logprob, entropy = logprob * row_mask, entropy * row_mask
    (logprob * w_logprob).sum().add((entropy * w_entropy).sum()).backward()
    return logprob.detach(), entropy.detach(), x.grad


def topk_oracle(student, teacher, row_mask, weights, **kw):
    """(per-token loss, d sum(weights * loss) / d student), float64, zero at rows not in the mask."""
    s = student.detach().double().requires_grad_()
    loss = topk_tail_kl_reference(s, teacher.double(), dtype=torch.float64, **kw) * row_mask
    (loss * weights).sum().backward()
    return loss.detach(), s.grad


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The spacing of `dtype` numbers at |x| (float64; bf16 has 8 significant bits, fp16 11)."""
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(x.double().abs())  # |x| = m 2^exponent, m in [0.5, 1)
    spacing = torch.ldexp(torch.full_like(x, info.eps, dtype=torch.float64), exponent - 1)
    return spacing.clamp_min(info.smallest_normal * info.eps)  # subnormals are evenly spaced


def assert_close(actual: Tensor, expected: Tensor, atol: float, what: str, rtol: float = 0.0) -> None:
    """|actual - expected| <= atol + rtol * |expected| everywhere."""
    excess = (actual.double() - expected.double()).abs() - rtol * expected.double().abs()
    err = excess.max().item()
    assert err <= atol, f"{what}: max error {err:.3g} > {atol:.1g} (rtol {rtol:g})"
