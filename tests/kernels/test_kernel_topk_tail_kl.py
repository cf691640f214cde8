"""topk_tail_kl against float64 torch autograd through the materialising `topk_tail_kl_reference`
(and, with k covering the vocabulary, through `kl_reference`); tensor parallelism emulated by
running its per-shard primitives on vocabulary slices, merged by the functions the distributed
path calls after its all-gather."""
import math

import pytest
import torch
from kernel_oracles import GRAD_ATOL, KL_ATOL, assert_close, kl_oracle, make_logits, topk_oracle, ulp, with_extremes

from megatron_omni.kernels import topk_tail_kl
from megatron_omni.kernels.common.vocab_shards import RowSelection, TPGroup, vocab_shard
from megatron_omni.kernels.kl.stats import KLSpec
from megatron_omni.kernels.topk_kl.chunked import local_top, shard_backward, shard_candidates
from megatron_omni.kernels.topk_kl.stats import category_loss, rank_keys, select_support

MODES = ["forward", "reverse", "jsd"]
B, S, V_PAD, V_REAL = 3, 20, 1000, 997


def _inputs(seed, dtype=torch.float32, teacher_scale=2.0):
    student = make_logits((B, S, V_PAD), seed, dtype=dtype)
    teacher = make_logits((B, S, V_PAD), seed + 1, scale=teacher_scale, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 2)
    return student, teacher, torch.rand((B, S), generator=gen) > 0.3, torch.rand((B, S), generator=gen) + 0.5


def _run(student, teacher, mask, weights, **kw):
    s = student.clone().requires_grad_()
    out = topk_tail_kl(s, teacher, row_mask=mask, **kw)
    (out * weights).sum().backward()
    return out, s.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 5, 64, V_REAL])
def test_matches_dense_reference_with_masked_rows_and_padded_vocab(mode, k):
    student, teacher, mask, weights = _inputs(seed=10)
    kw = dict(k=k, mode=mode, beta=0.3, temperature=0.7, vocab_size=V_REAL)
    out, grad = _run(student, teacher, mask, weights, **kw)
    ref, ref_grad = topk_oracle(student, teacher, mask, weights, **kw)
    assert out.dtype == torch.float32 and out.shape == (B, S)
    assert_close(out, ref, KL_ATOL, "loss")
    assert_close(grad, ref_grad, GRAD_ATOL, "student grad")
    assert (out[~mask] == 0).all() and (grad[~mask] == 0).all() and (grad[..., V_REAL:] == 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [V_REAL, 5000])
def test_k_covering_the_vocabulary_is_the_full_divergence(mode, k):
    student, teacher, mask, weights = _inputs(seed=20)
    kw = dict(mode=mode, beta=0.6, temperature=1.5, vocab_size=V_REAL)
    out, grad = _run(student, teacher, mask, weights, k=k, **kw)
    ref, ref_grad, _ = kl_oracle(student, teacher, row_mask=mask, weights=weights, **kw)
    assert_close(out, ref, KL_ATOL, "loss")
    assert_close(grad, ref_grad, GRAD_ATOL, "student grad")


@pytest.mark.parametrize("mode", MODES)
def test_bf16_inputs_with_tied_teacher_logits(mode):
    # bf16 teacher logits tie often: the top-k boundary falls inside runs of equal values.
    student, teacher, mask, weights = _inputs(seed=30, dtype=torch.bfloat16)
    kw = dict(k=20, mode=mode, temperature=0.7, vocab_size=V_REAL)
    out, grad = _run(student, teacher, mask, weights, **kw)
    ref, ref_grad = topk_oracle(student, teacher, mask, weights, **kw)
    assert grad.dtype == torch.bfloat16
    assert_close(out, ref, KL_ATOL, "loss")
    excess = (grad.double() - ref_grad).abs() - ulp(ref_grad, torch.bfloat16) - GRAD_ATOL
    assert excess.max() <= 0, f"student grad beyond 1 bf16 ulp by {excess.max():.3g}"


def test_ties_go_to_the_lower_id():
    values = torch.tensor([[1.0, 3.0, 3.0, -0.0, 3.0, 0.0, float("-inf")]])
    order = rank_keys(values, torch.arange(7)).argsort(dim=1, descending=True)
    assert order.tolist() == [[1, 2, 4, 0, 3, 5, 6]]  # -0.0 and 0.0 tie
    tied = make_logits((50, 300), 36).mul(2).round()  # a shard's tile: the same order, no int64 keys
    for k in (1, 7, 40, 300):
        want = rank_keys(tied, torch.arange(300)).topk(k, dim=1).indices
        assert torch.equal(local_top(tied, k).sort(dim=1).values, want.sort(dim=1).values)
    # Integer teacher logits: many ties at every k; the op must pick what the reference picks.
    student, teacher, mask, weights = _inputs(seed=35)
    teacher = teacher.round()
    for k in (3, 17):
        out, grad = _run(student, teacher, mask, weights, k=k, mode="reverse", vocab_size=V_REAL)
        ref, ref_grad = topk_oracle(student, teacher, mask, weights, k=k, mode="reverse", vocab_size=V_REAL)
        assert_close(out, ref, KL_ATOL, f"loss at k={k}")
        assert_close(grad, ref_grad, GRAD_ATOL, f"student grad at k={k}")


@pytest.mark.parametrize("mode", MODES)
def test_tail_far_below_fp32_resolution(mode):
    # The teacher's top-5 hold all but ~1e-15 of its mass (1 - sum would give 0 in fp32) and every
    # other row carries logits of +-1e4: the tail's log-probability must still be exact.
    student, teacher, mask, weights = _inputs(seed=40)
    teacher[..., 100:105] += 45.0
    student = with_extremes(student.view(B * S, V_PAD), 41, V_REAL).view(B, S, V_PAD)
    kw = dict(k=5, mode=mode, vocab_size=V_REAL)
    out, grad = _run(student, teacher, mask, weights, **kw)
    ref, ref_grad = topk_oracle(student, teacher, mask, weights, **kw)
    assert torch.isfinite(out).all()
    assert_close(out, ref, KL_ATOL, "loss", rtol=1e-6)
    assert_close(grad, ref_grad, GRAD_ATOL, "student grad")


@pytest.mark.parametrize("mode", MODES)
def test_identical_logits_give_exactly_zero(mode):
    student, _, _, _ = _inputs(seed=45, dtype=torch.bfloat16)
    s = student.clone().requires_grad_()
    out = topk_tail_kl(s, student, k=9, mode=mode, beta=0.3)
    out.sum().backward()
    assert (out == 0).all() and (s.grad == 0).all()


def test_teacher_is_a_constant_and_no_rows_give_zeros():
    student, teacher, mask, _ = _inputs(seed=50)
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    topk_tail_kl(s, t, k=8).sum().backward()
    assert t.grad is None and s.grad is not None
    s.grad = None
    out = topk_tail_kl(s, teacher, k=8, row_mask=torch.zeros_like(mask))
    out.sum().backward()
    assert (out == 0).all() and (s.grad == 0).all()


X = torch.zeros(4, 10)


@pytest.mark.parametrize("kwargs, field", [
    (dict(k=0), "k: must be an int >= 1"),
    (dict(k=2.0), "k:"),
    (dict(k=True), "k:"),
    (dict(k=3, mode="kl"), "mode"),
    (dict(k=3, mode="jsd", beta=-0.1), "beta"),
    (dict(k=3, temperature=float("inf")), "temperature"),
    (dict(k=3, vocab_size=11), "vocab_size"),
    (dict(k=3, row_mask=torch.ones(5, dtype=torch.bool)), "row_mask: shape"),
    (dict(k=3, teacher_logits=torch.zeros(4, 9)), "teacher_logits: shape"),
    (dict(k=3, student_logits=X.long()), "student_logits: dtype"),
])
def test_rejects(kwargs, field):
    args = {"student_logits": X, "teacher_logits": X, **kwargs}
    with pytest.raises(ValueError, match=field):
        topk_tail_kl(**args)


ROWS = 48
# name -> (shard sizes, real vocabulary size, logits kind); shard starts are the running sums.
LAYOUTS = {
    "tp1": ([997], 997, "plain"),
    "tp2_even_padded": ([500, 500], 997, "tied"),
    "tp3_uneven": ([301, 450, 249], 995, "plain"),
    "tp3_tied": ([334, 334, 334], 997, "tied"),
    "tp4_padding_only_shard": ([250, 250, 250, 250], 700, "plain"),
    "tp4_extreme_logits": ([250, 250, 250, 250], 997, "extreme"),
    "tp4_masked_shard": ([250, 250, 250, 250], 997, "masked_shard"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 6, 280, 1000])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_over_emulated_shards(layout, k, mode):
    sizes, vocab_size, kind = LAYOUTS[layout]
    student = make_logits((ROWS, sum(sizes)), 1, scale=1.5)
    teacher = make_logits((ROWS, sum(sizes)), 2, scale=1.5)
    if kind == "tied":
        teacher = teacher.mul(2).round()
    if kind == "extreme":  # the huge logits fall in different shards for different rows
        student, teacher = with_extremes(student, 4, vocab_size), with_extremes(teacher, 4, vocab_size)
    if kind == "masked_shard":  # every other row masked at -inf over all of the third shard, in both
        student[::2, 500:750] = teacher[::2, 500:750] = -math.inf
    gen = torch.Generator().manual_seed(5)
    mask, weights = torch.rand(ROWS, generator=gen) > 0.25, torch.rand(ROWS, generator=gen) + 0.5
    rows = RowSelection(ROWS, mask.nonzero().squeeze(1))
    spec = KLSpec.of(mode, 0.4, 0.8)
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    shards = [(a, vocab_shard(n, TPGroup(None, r, len(sizes)), vocab_size, a))
              for r, (a, n) in enumerate(zip(starts, sizes))]

    def piece(x, start, shard):
        return x[:, start:start + shard.n_cols]

    local = [shard_candidates(piece(student, a, sh), piece(teacher, a, sh), rows, sh, k, spec.inv_temp)
             for a, sh in shards]
    support = select_support(torch.stack(local), k, spec.inv_temp)  # = all-gather + merge
    loss, weight = category_loss(support.log_q, support.log_r, spec)
    grads = []
    for a, sh in shards:
        g = torch.empty(ROWS, sh.n_cols)
        shard_backward(piece(student, a, sh), rows, sh, spec.inv_temp, support.ids, weight, support.m_s,
                       support.logz_tail, rows.gather(weights), g)
        grads.append(g)

    kw = dict(k=k, mode=mode, beta=0.4, temperature=0.8, vocab_size=vocab_size)
    ref, ref_grad = topk_oracle(student, teacher, mask, weights, **kw)
    assert_close(rows.scatter(loss), ref, KL_ATOL, "loss", rtol=1e-6 if kind == "extreme" else 0.0)
    assert_close(torch.cat(grads, dim=1), ref_grad, GRAD_ATOL, "student grad")
