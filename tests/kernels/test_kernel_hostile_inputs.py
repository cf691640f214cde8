"""Hostile inputs for every op, on both backends (Triton under the interpreter and the chunked
torch path), against float64 autograd through the ops' references (`<op>/reference.py`: plain
log_softmax): logit scales up to 50, masked vocabulary entries at -1e4 and at -inf, bf16 and fp16
inputs, temperatures 0.5 and 0.25, a vocabulary that is no multiple of the column tile, padded
vocabularies whose padding holds NaN (it must never be read), rows that are no multiple of the row
tile, a single token, a single selected row and no selected row. Losses and gradients must be
finite and within tolerance everywhere, and exactly 0 at padding columns and unselected rows.

Masked entries sit at the same columns in student and teacher (25% of each row), plus 10% more in
the distribution that weights the divergence only (the teacher's for the forward KL, the student's
for the reverse KL, both for the JSD; the log-prob op's logits get them too). Masked at -1e4, the other side keeps its
logits there and the divergences are large but finite. Masked at -inf, the extras keep the true
values finite: KL(A || B) is infinite wherever A has mass and B has a -inf logit (the forward KL
with the student masked where the teacher is not, the reverse KL with the teacher masked where the
student is not), so the sweep never makes those inputs; the JSD's mixture is finite either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from kernel_oracles import GRAD_ATOL, KL_ATOL, kl_oracle, logprob_oracle, topk_oracle, ulp

from megatron_omni.kernels import evidence_masked_kl, topk_tail_kl, vocab_parallel_kl, vocab_parallel_logprob_entropy
from megatron_omni.kernels.common.dense_math import log_probs
from megatron_omni.kernels.evidence_kl.reference import evidence_masked_kl_reference

# The interpreter evaluates masked (-inf) lanes with numpy, which warns about inf - inf.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

BACKENDS = ["triton", "torch"]
MODES = ["forward", "reverse", "jsd"]
INF = math.inf


@dataclass(frozen=True)
class Case:
    rows: int = 37  # no multiple of the interpreter's 64-row program tile
    n_cols: int = 1100  # two interpreter column tiles: 1024 and a partial one
    vocab_size: int | None = None  # < n_cols: a padded vocabulary, NaN in the padding
    scale: float = 1.0  # standard deviation of the logits
    temperature: float = 1.0
    dtype: torch.dtype = torch.float32
    masked: float | None = None  # logit of the masked vocabulary entries: -1e4 or -inf
    select: str = "mask"  # "mask" (about 70% of the rows), "all", "one" (a single row), "none"


CASES = {
    # Near one-hot student and teacher on different tokens: the JSD was inf with NaN gradients.
    "scale20_V1000": Case(n_cols=1000, scale=20.0, select="all"),
    "scale50": Case(scale=50.0),
    "scale50_T0.25": Case(scale=50.0, temperature=0.25),
    "scale5_T0.5_masked-1e4": Case(scale=5.0, temperature=0.5, masked=-1e4),
    "scale20_masked-inf": Case(scale=20.0, masked=-INF),
    "scale50_T0.25_masked-inf_padded": Case(scale=50.0, temperature=0.25, masked=-INF, vocab_size=1037),
    "bf16_scale50_T0.5_masked-1e4": Case(scale=50.0, temperature=0.5, dtype=torch.bfloat16, masked=-1e4),
    "bf16_scale5_masked-inf_padded": Case(scale=5.0, dtype=torch.bfloat16, masked=-INF, vocab_size=1037),
    "fp16_scale20_T0.25_masked-inf": Case(scale=20.0, temperature=0.25, dtype=torch.float16, masked=-INF),
    "fp16_scale50_masked-1e4_padded": Case(scale=50.0, dtype=torch.float16, masked=-1e4, vocab_size=1037),
    "padded_997_of_1000_T0.5": Case(n_cols=1000, vocab_size=997, scale=3.0, temperature=0.5),
    "single_token": Case(rows=1, select="all", scale=50.0, temperature=0.25, masked=-INF),
    "single_selected_row": Case(rows=16, select="one", scale=20.0, masked=-1e4, vocab_size=1037),
    "no_selected_row": Case(rows=16, select="none", scale=50.0, masked=-INF),
}

# Tolerance beyond KL_ATOL / GRAD_ATOL, relative to `condition` below: about 32 fp32 roundings.
COND_RTOL = 4e-6


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mask_columns(case: Case, seed: int, fraction: float) -> torch.Tensor:
    """Per row, a random `fraction` of the real columns (bool [rows, n_cols])."""
    real = case.vocab_size or case.n_cols
    scores = torch.rand((case.rows, real), generator=_generator(seed))
    out = torch.zeros((case.rows, case.n_cols), dtype=torch.bool)
    out[:, :real] = scores < fraction
    return out


def _logits(case: Case, seed: int) -> torch.Tensor:
    x = (torch.randn((case.rows, case.n_cols), generator=_generator(seed)) * case.scale).to(case.dtype)
    if case.vocab_size is not None:
        x[:, case.vocab_size:] = math.nan  # padding: never read
    return x


def pair(case: Case, seed: int, extra: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits; `extra` names who gets the additional masked entries:
    "student", "teacher" or "both" (independently)."""
    student, teacher = _logits(case, seed), _logits(case, seed + 1)
    if case.masked is not None:
        shared = _mask_columns(case, seed + 2, 0.25)
        student[shared | (_mask_columns(case, seed + 3, 0.1) if extra in ("student", "both") else False)] = case.masked
        teacher[shared | (_mask_columns(case, seed + 4, 0.1) if extra in ("teacher", "both") else False)] = case.masked
    return student, teacher


def extra_side(mode: str) -> str:
    """Who may carry -inf entries the other side lacks while the divergence stays finite."""
    return {"forward": "teacher", "reverse": "student", "jsd": "both"}[mode]


def row_mask(case: Case, seed: int) -> torch.Tensor:
    if case.select == "all":
        return torch.ones(case.rows, dtype=torch.bool)
    mask = torch.zeros(case.rows, dtype=torch.bool)
    if case.select == "one":
        mask[case.rows // 2] = True
    elif case.select == "mask":
        mask = torch.rand(case.rows, generator=_generator(seed)) > 0.3
    return mask


def weights(case: Case, seed: int) -> torch.Tensor:
    return torch.rand(case.rows, generator=_generator(seed)) + 0.5


def condition(case: Case, *logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How much the exact values amplify the rounding of fp32 log-probabilities, from float64 ones
    of the distributions d given: per element c_v = m_v (a_v + C), per row C = sum_v m_v a_v, with
    m_v = sum_d p_dv and a_v = sum_d |log p_dv| (entries without mass excluded). A log-probability
    (x - M) / T - log Z is exact to about eps |log p|: a KL, a sum of such terms weighted by
    probabilities, to about eps C, and a gradient element, p_v times its own and the KL's, to
    about eps c_v. With scales of 50, T = 0.25 or -1e4 masks, |log p| reaches 1e3 to 4e4."""
    lps = [log_probs(x.double(), case.temperature, case.vocab_size, torch.float64) for x in logits]
    mass = sum(lp.exp() for lp in lps)
    magnitude = sum(torch.where(torch.isfinite(lp), lp.abs(), 0.0) for lp in lps)
    per_row = (mass * magnitude).sum(-1)
    per_element = mass * (magnitude + per_row[:, None])
    if case.vocab_size is not None:  # padding: exact zeros are expected there
        per_element = torch.cat([per_element, per_element.new_zeros(case.rows, case.n_cols - case.vocab_size)], 1)
    return per_element, per_row


def check(actual: torch.Tensor, expected: torch.Tensor, atol: float, cond, what: str, dtype=torch.float32):
    """Finite, and |actual - expected| <= atol + COND_RTOL cond (+ one `dtype` ulp of expected, for
    bf16 / fp16 results; fp32 rounding is what `condition` covers)."""
    assert torch.isfinite(expected).all(), f"{what}: the oracle is not finite (the case is ill-posed)"
    assert torch.isfinite(actual).all(), f"{what}: {int((~torch.isfinite(actual)).sum())} non-finite values"
    err = (actual.double() - expected).abs()
    excess = err - COND_RTOL * cond - (ulp(expected, dtype) if dtype != torch.float32 else 0.0)
    assert excess.max() <= atol, f"{what}: error {err.max().item():.3g}, beyond tolerance by {excess.max().item():.3g}"


def check_zeros(grad: torch.Tensor, case: Case, mask: torch.Tensor, what: str) -> None:
    assert (grad[~mask] == 0).all(), f"{what}: non-zero gradient at unselected rows"
    if case.vocab_size is not None:
        assert (grad[:, case.vocab_size:] == 0).all(), f"{what}: non-zero gradient at padding columns"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_vocab_parallel_kl(name, mode, backend):
    case = CASES[name]
    student, teacher = pair(case, 1, extra_side(mode))
    mask, w = row_mask(case, 5), weights(case, 6)
    kw = dict(mode=mode, beta=0.3, temperature=case.temperature, vocab_size=case.vocab_size)
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    out = vocab_parallel_kl(s, t, row_mask=mask, backend=backend, **kw)
    (out * w).sum().backward()
    ref, ref_s, ref_t = kl_oracle(student, teacher, row_mask=mask, weights=w, teacher_grad=True, **kw)
    cond, cond_rows = condition(case, student, teacher)
    check(out, ref, KL_ATOL, cond_rows, "loss")
    assert (out[~mask] == 0).all()
    if mode == "jsd":  # M >= beta P_T and M >= (1 - beta) P_S: the JSD is at most H(beta) <= ln 2
        assert (out <= -(0.3 * math.log(0.3) + 0.7 * math.log(0.7)) + 1e-6).all()
    for grad, want, what in ((s.grad, ref_s, "student grad"), (t.grad, ref_t, "teacher grad")):
        assert grad.dtype == case.dtype
        check(grad, want, GRAD_ATOL, cond * (w / case.temperature)[:, None], what, case.dtype)
        check_zeros(grad, case, mask, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_vocab_parallel_logprob_entropy(name, backend):
    case = CASES[name]
    logits, _ = pair(case, 11, "student")
    real = case.vocab_size or case.n_cols
    # Targets among the entries with mass (a -1e4 target has a large but finite log-prob).
    scores = torch.rand((case.rows, real), generator=_generator(14)).masked_fill(logits[:, :real] == -INF, -1.0)
    targets = scores.argmax(dim=1)
    mask, w_lp, w_ent = row_mask(case, 15), weights(case, 16), weights(case, 17)
    x = logits.clone().requires_grad_()
    logprob, entropy = vocab_parallel_logprob_entropy(x, targets, temperature=case.temperature,
                                                      vocab_size=case.vocab_size, row_mask=mask, backend=backend)
    ((logprob * w_lp).sum() + (entropy * w_ent).sum()).backward()
    ref_lp, ref_ent, ref_g = logprob_oracle(logits, targets, temperature=case.temperature, vocab_size=case.vocab_size,
                                            row_mask=mask, w_logprob=w_lp, w_entropy=w_ent)
    cond, cond_rows = condition(case, logits)
    check(logprob, ref_lp, KL_ATOL, ref_lp.abs(), "log-prob")
    check(entropy, ref_ent, KL_ATOL, cond_rows, "entropy")
    assert x.grad.dtype == case.dtype
    check(x.grad, ref_g, GRAD_ATOL, cond * ((w_lp + w_ent) / case.temperature)[:, None], "logits grad", case.dtype)
    check_zeros(x.grad, case, mask, "logits grad")


@pytest.mark.parametrize("k", [7, 300])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_topk_tail_kl(name, mode, k):
    case = CASES[name]
    student, teacher = pair(case, 21, extra_side(mode))
    mask, w = row_mask(case, 25), weights(case, 26)
    kw = dict(k=k, mode=mode, beta=0.3, temperature=case.temperature, vocab_size=case.vocab_size)
    s = student.clone().requires_grad_()
    out = topk_tail_kl(s, teacher, row_mask=mask, **kw)
    (out * w).sum().backward()
    ref, ref_grad = topk_oracle(student, teacher, mask, w, **kw)
    cond, cond_rows = condition(case, student, teacher)  # the full distributions bound the collapsed ones'
    check(out, ref, KL_ATOL, cond_rows, "loss")
    assert (out[~mask] == 0).all()
    assert s.grad.dtype == case.dtype
    check(s.grad, ref_grad, GRAD_ATOL, cond * (w / case.temperature)[:, None], "student grad", case.dtype)
    check_zeros(s.grad, case, mask, "student grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_evidence_masked_kl(name, backend):
    case = CASES[name]
    # The reverse KL(full || masked input): the full-input logits carry the extra masked entries.
    full, visual = pair(case, 31, "student")
    audio = _logits(case, 37)
    audio[visual == case.masked] = case.masked if case.masked is not None else 0.0  # the teacher's masked entries
    masked = {"visual": visual, "audio": audio}
    selected = row_mask(case, 35)
    split = torch.rand(case.rows, generator=_generator(36)) > 0.5
    masks = {"visual": selected & split, "audio": selected & ~split}
    kw = dict(gamma=0.5, sign="penalize_divergence", temperature=case.temperature, vocab_size=case.vocab_size)
    x = full.clone().requires_grad_()
    out = evidence_masked_kl(x, masked, masks, backend=backend, **kw)
    out.loss.backward()
    y = full.detach().double().requires_grad_()
    ref = evidence_masked_kl_reference(y, {m: v.double() for m, v in masked.items()}, masks, dtype=torch.float64, **kw)
    ref.backward()
    # Each modality's mean KL has weight gamma / n_m on its rows.
    loss_cond, grad_cond = 0.0, torch.zeros(case.rows, case.n_cols, dtype=torch.float64)
    for modality, logits in masked.items():
        cond, cond_rows = condition(case, full, logits)
        row_weight = kw["gamma"] * masks[modality] / max(1, int(masks[modality].sum()))
        loss_cond = loss_cond + (row_weight * cond_rows).sum()
        grad_cond += cond * (row_weight / case.temperature)[:, None]
    check(out.loss, ref.detach(), KL_ATOL, loss_cond, "loss")
    check(x.grad, y.grad, GRAD_ATOL, grad_cond, "full-logits grad", case.dtype)
    check_zeros(x.grad, case, selected, "full-logits grad")
    assert out.n_evidence == {m: int(v.sum()) for m, v in masks.items()}
