"""vocab_parallel_kl against torch autograd through the materialising reference (float64), on
both the Triton path (interpreter) and the chunked torch path."""
import math

import pytest
import torch
from kernel_oracles import GRAD_ATOL, KL_ATOL, assert_close, kl_oracle, make_logits, ulp, with_extremes

from megatron_omni.kernels import vocab_parallel_kl

# The interpreter evaluates masked (-inf) lanes with numpy, which warns about inf - inf.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

BACKENDS = ["triton", "torch"]
MODES = ["forward", "reverse", "jsd"]
B, S, V_PAD, V_REAL = 3, 20, 1000, 997


def _inputs(seed=0, dtype=torch.float32, extremes=False):
    student = make_logits((B * S, V_PAD), seed, dtype=torch.float32)
    teacher = make_logits((B * S, V_PAD), seed + 1, dtype=torch.float32)
    if extremes:
        student, teacher = with_extremes(student, seed + 2, V_REAL), with_extremes(teacher, seed + 2, V_REAL)
    gen = torch.Generator().manual_seed(seed + 3)
    mask = torch.rand((B, S), generator=gen) > 0.3
    weights = torch.rand((B, S), generator=gen) + 0.5
    return student.view(B, S, V_PAD).to(dtype), teacher.view(B, S, V_PAD).to(dtype), mask, weights


def _run(student, teacher, mask, weights, backend, teacher_grad=True, **kw):
    s = student.clone().requires_grad_()
    t = teacher.clone().requires_grad_(teacher_grad)
    out = vocab_parallel_kl(s, t, row_mask=mask, backend=backend, **kw)
    (out * weights).sum().backward()
    return out, s.grad, t.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_matches_autograd_with_masked_weighted_rows_and_padded_vocab(backend, mode, temperature):
    student, teacher, mask, weights = _inputs(seed=10)
    kw = dict(mode=mode, beta=0.3, temperature=temperature, vocab_size=V_REAL)
    out, g_s, g_t = _run(student, teacher, mask, weights, backend, **kw)
    ref, ref_s, ref_t = kl_oracle(student, teacher, row_mask=mask, weights=weights, teacher_grad=True, **kw)
    assert out.dtype == torch.float32 and out.shape == (B, S)
    assert_close(out, ref, KL_ATOL, "KL")
    assert_close(g_s, ref_s, GRAD_ATOL, "student grad")
    assert_close(g_t, ref_t, GRAD_ATOL, "teacher grad")
    assert (out[~mask] == 0).all() and (g_s[~mask] == 0).all()
    assert (g_s[..., V_REAL:] == 0).all() and (g_t[..., V_REAL:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_extreme_logits(backend, mode):
    student, teacher, mask, weights = _inputs(seed=20, extremes=True)
    kw = dict(mode=mode, temperature=0.7, vocab_size=V_REAL)
    out, g_s, g_t = _run(student, teacher, mask, weights, backend, **kw)
    ref, ref_s, ref_t = kl_oracle(student, teacher, row_mask=mask, weights=weights, teacher_grad=True, **kw)
    assert torch.isfinite(out).all()
    assert_close(out, ref, KL_ATOL, "KL")
    assert_close(g_s, ref_s, GRAD_ATOL, "student grad")
    assert_close(g_t, ref_t, GRAD_ATOL, "teacher grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_disjoint_support_gives_large_finite_kl(backend):
    # The teacher puts its mass where the student has a logit of -1e4: KL ~ 1e4, exact to fp32.
    student, teacher, mask, weights = _inputs(seed=25)
    student[..., 5] = -1.0e4
    teacher[..., 5] = 1.0e4
    out, _, _ = _run(student, teacher, mask, weights, backend, teacher_grad=False, mode="forward")
    ref, _, _ = kl_oracle(student, teacher, mode="forward", row_mask=mask)
    assert torch.isfinite(out).all() and out[mask].min() > 1.0e4
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=KL_ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_bf16_inputs_within_one_ulp(backend, mode):
    student, teacher, mask, weights = _inputs(seed=30, dtype=torch.bfloat16)
    kw = dict(mode=mode, temperature=0.7, vocab_size=V_REAL)
    out, g_s, g_t = _run(student, teacher, mask, weights, backend, **kw)
    ref, ref_s, ref_t = kl_oracle(student, teacher, row_mask=mask, weights=weights, teacher_grad=True, **kw)
    assert g_s.dtype == torch.bfloat16 and g_t.dtype == torch.bfloat16
    assert_close(out, ref, KL_ATOL, "KL")
    for grad, want, name in ((g_s, ref_s, "student"), (g_t, ref_t, "teacher")):
        excess = (grad.double() - want).abs() - ulp(want, torch.bfloat16) - GRAD_ATOL
        assert excess.max() <= 0, f"{name} grad beyond 1 bf16 ulp by {excess.max():.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_index_on_2d_logits_and_teacher_without_grad(backend):
    student, teacher, mask, weights = _inputs(seed=40)
    s2, t2 = student.view(-1, V_PAD), teacher.view(-1, V_PAD)
    index = mask.view(-1).nonzero().squeeze(1)
    s = s2.clone().requires_grad_()
    out = vocab_parallel_kl(s, t2, mode="reverse", row_index=index.flip(0), backend=backend)
    (out * weights.view(-1)).sum().backward()
    ref, ref_s, _ = kl_oracle(s2, t2, mode="reverse", row_mask=mask.view(-1), weights=weights.view(-1))
    assert_close(out, ref, KL_ATOL, "KL")
    assert_close(s.grad, ref_s, GRAD_ATOL, "student grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_jsd_limits_are_the_kls(backend):
    student, teacher, _, _ = _inputs(seed=50)
    fwd = vocab_parallel_kl(student, teacher, mode="forward", backend=backend)
    rev = vocab_parallel_kl(student, teacher, mode="reverse", backend=backend)
    assert torch.equal(vocab_parallel_kl(student, teacher, mode="jsd", beta=0.0, backend=backend), fwd)
    assert torch.equal(vocab_parallel_kl(student, teacher, mode="jsd", beta=1.0, backend=backend), rev)
    assert not torch.allclose(fwd, rev)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jsd_of_near_one_hot_distributions_on_different_tokens(backend):
    # Logits of standard deviation 20: both probabilities of most tokens underflow fp32 while one
    # of them is > 0. The mixture's log was log(0) = -inf there: the JSD came out inf, its
    # gradient NaN. The true value is at most ln 2 (beta = 0.5).
    student, teacher = make_logits((16, 1000), 80, scale=20.0), make_logits((16, 1000), 81, scale=20.0)
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    out = vocab_parallel_kl(s, t, mode="jsd", backend=backend)
    out.sum().backward()
    ref, ref_s, ref_t = kl_oracle(student, teacher, mode="jsd", teacher_grad=True)
    assert (out <= math.log(2.0) + 1e-6).all()
    assert_close(out, ref, KL_ATOL, "JSD")
    assert_close(s.grad, ref_s, GRAD_ATOL, "student grad")
    assert_close(t.grad, ref_t, GRAD_ATOL, "teacher grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.5, 0.3])
def test_identical_logits_give_exactly_zero(backend, beta):
    student, _, _, _ = _inputs(seed=85, dtype=torch.bfloat16)
    s = student.clone().requires_grad_()
    for mode in MODES:
        out = vocab_parallel_kl(s, student, mode=mode, beta=beta, backend=backend)
        out.sum().backward()
        assert (out == 0).all() and (s.grad == 0).all(), mode
        s.grad = None


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_selected_rows(backend):
    student, teacher, mask, _ = _inputs(seed=60)
    s = student.clone().requires_grad_()
    out = vocab_parallel_kl(s, teacher, row_mask=torch.zeros_like(mask), backend=backend)
    out.sum().backward()
    assert (out == 0).all() and (s.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_backward_writes_the_gradient_into_the_logits(backend):
    student, teacher, mask, weights = _inputs(seed=70)
    leaf = student.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf whose producer does not need it for its own backward
    saved_elsewhere = logits.pow(2).sum()  # pow saves its input: must fail after the overwrite
    out = vocab_parallel_kl(logits, teacher, mode="reverse", row_mask=mask, inplace_backward=True, backend=backend)
    (out * weights).sum().backward()
    _, ref_s, _ = kl_oracle(student, teacher, mode="reverse", row_mask=mask, weights=weights)
    assert_close(leaf.grad, ref_s, GRAD_ATOL, "student grad")
    assert_close(logits.detach(), ref_s, GRAD_ATOL, "logits overwritten by their gradient")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved_elsewhere.backward()
