"""KL / JSD per token between the student's and the teacher's distributions collapsed onto the
teacher's top-k tokens plus one tail bucket, with the vocabulary optionally sharded over a
tensor-parallel group, never materialising fp32 [tokens x vocab].

Conventions (those of `vocab_parallel_kl`): P_S = softmax(student / T), P_T = softmax(teacher / T)
over the real vocabulary (global columns >= vocab_size are padding, ignored). Per token:
  S     the k token ids with the largest raw teacher logits over the whole vocabulary (all TP
        shards); ties go to the lower id, so S depends neither on the sharding nor on the order
        a top-k routine returns equal values in. With k >= the real vocabulary S is all of it.
  Q_S   P_S collapsed onto k + 1 categories: P_S(i) for i in S, and the tail
        P_S(not S) = 1 - sum_{i in S} P_S(i); Q_T likewise from P_T.
  mode="forward"  KL(Q_T || Q_S)
  mode="reverse"  KL(Q_S || Q_T)
  mode="jsd"      beta * KL(Q_T || M) + (1 - beta) * KL(Q_S || M), M = beta Q_T + (1 - beta) Q_S
                  (beta = 0 is the forward KL and beta = 1 the reverse KL, as in vocab_parallel_kl).
The tail is never formed as 1 - sum (which cancels when S holds nearly all the mass): its log is
the logsumexp of the logits outside S minus that of all logits, exact down to tails far below
fp32's smallest number. An empty tail (k >= vocabulary) has probability 0 under both
distributions and contributes nothing, so the loss is then `vocab_parallel_kl`'s.

The teacher is a constant: its logits are read without autograd (no gradient reaches them, even
when they require grad; S is a piecewise-constant function of them anyway).

Memory: rows are processed a chunk at a time (`kernels.chunking`); across chunks and ranks only
per-row values travel: each shard's softmax statistics over its columns outside its local top-k,
and its k candidates (teacher logit, student logit, global id). One all-gather exchanges them;
the global top-k, the normalisers and the k + 1 category probabilities follow from them exactly
(the global top-k lies among the local ones), in per-row tensors of world * k candidates.
The backward recomputes the student softmax chunk by chunk from the saved logits and per-row
values and needs no communication.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_omni.kernels.chunking import read_tile, row_chunks, write_tile, zero_unwritten
from megatron_omni.kernels.kl_stats import FORWARD, REVERSE, KLSpec
from megatron_omni.kernels.online_softmax import NEG_START
from megatron_omni.kernels.sharding import RowSelection, TPGroup, VocabShard, select_rows, vocab_shard
from megatron_omni.kernels.validation import as_rows, check_logits, check_pair, check_temperature, fail

# A shard's per-row block (float32, [rows, 4 + 3k]): its softmax statistics over the columns
# outside its local top-k (max of the raw logits and sum exp((x - max) / T), student then teacher),
# then its k candidates: teacher logits, student logits, global ids (int32 bits). A shard with
# fewer than k real columns fills the rest with logits -inf and id -1.
M_S, Z_S, M_T, Z_T = range(4)
N_STATS = 4
_NO_KEY = torch.iinfo(torch.int64).min


def rank_keys(teacher: Tensor, ids: Tensor) -> Tensor:
    """int64 keys ordering tokens by raw teacher logit, descending, and among equal logits by id,
    ascending: the top-k of the keys is the top-k with ties to the lower id, whatever the split.
    High 32 bits: the fp32 bits made order-preserving as a signed int; low 32: 2^32 - 1 - id."""
    bits = (teacher.float() + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    bits ^= (bits >> 31) & 0x7FFFFFFF  # negative floats: reverse the order of their magnitudes
    bits <<= 32
    return bits.add_(0xFFFFFFFF - ids)


def local_top(teacher: Tensor, k: int) -> Tensor:
    """Columns of the k largest values per row of an fp32 tile, ties to the lower column: the
    order of `rank_keys` without its [rows x columns] int64 keys. A float top-k fixes the k-th
    value and every larger one; the ties at that value which it kept (a suffix of its sorted
    output) are replaced by the lowest columns holding that value (columns are compared as fp32,
    exact for shards of up to 2^24 columns)."""
    values, top = teacher.topk(k, dim=1)
    kth = values[:, -1:]
    n_above = (values > kth).sum(dim=1, keepdim=True)
    cols = torch.arange(teacher.shape[1], dtype=teacher.dtype, device=teacher.device)
    lowest_tied = torch.where(teacher == kth, -cols, -math.inf).topk(k, dim=1).indices
    slot = torch.arange(k, device=teacher.device)[None, :]
    return torch.where(slot < n_above, top, lowest_tied.gather(1, (slot - n_above).clamp_min_(0)))


def shard_candidates(student: Tensor, teacher: Tensor, rows: RowSelection, shard: VocabShard, k: int,
                     inv_temp: float) -> Tensor:
    """This shard's [rows, 4 + 3k] block (layout above) for the selected rows."""
    out = torch.empty((rows.count, N_STATS + 3 * k), dtype=torch.float32, device=student.device)
    out[:, [M_S, M_T]] = NEG_START
    out[:, [Z_S, Z_T]] = 0.0
    out[:, N_STATS:N_STATS + 2 * k] = -math.inf
    out[:, N_STATS + 2 * k:].view(torch.int32).fill_(-1)
    k_local = min(k, shard.n_valid)
    for chunk in row_chunks(rows, shard.n_valid) if k_local else ():
        t = read_tile(teacher, chunk, shard.n_valid)
        top = local_top(t, k_local)
        s = read_tile(student, chunk, shard.n_valid)
        block = out[chunk.slots]  # a view: the rows of this chunk
        block[:, N_STATS:N_STATS + k_local] = t.gather(1, top)
        block[:, N_STATS + k:N_STATS + k + k_local] = s.gather(1, top)
        block[:, N_STATS + 2 * k:N_STATS + 2 * k + k_local] = (top + shard.start).to(torch.int32).view(torch.float32)
        for x, m_col, z_col in ((s, M_S, Z_S), (t, M_T, Z_T)):
            x.scatter_(1, top, -math.inf)  # the rest of the shard: outside its local top-k
            m = x.amax(dim=1).clamp_min_(NEG_START)  # no column left: the empty shard's max
            block[:, m_col] = m
            block[:, z_col] = x.sub_(m[:, None]).mul_(inv_temp).exp_().sum(dim=1)
    return out


@dataclass(frozen=True)
class Support:
    """Per selected row: the global top-k `ids` [n, k] (-1 for categories beyond a vocabulary
    smaller than k), log Q_S and log Q_T [n, k + 1] (tail last), the student's raw max `m_s` and
    `logz_tail` = log sum_{v not in S} exp((s_v - m_s) / T)."""

    ids: Tensor
    log_q: Tensor
    log_r: Tensor
    m_s: Tensor
    logz_tail: Tensor


def _candidates(gathered: Tensor, first: int, k: int) -> Tensor:
    """[world, n, width] -> the [n, world * k] candidates' column run starting at `first`."""
    world, n, _ = gathered.shape
    return gathered[:, :, first:first + k].permute(1, 0, 2).reshape(n, world * k)


def _collapsed(stats_m: Tensor, stats_z: Tensor, cand: Tensor, chosen: Tensor, top: Tensor, inv_temp: float):
    """log probabilities of the k + 1 categories, the raw max and the tail's log-normaliser
    (centred on that max) from the shards' statistics [world, n] and the candidates [n, world*k]."""
    m = torch.maximum(stats_m.amax(dim=0), cand.amax(dim=1))
    rest = (cand - m[:, None]).mul_(inv_temp).masked_fill_(chosen, -math.inf)
    outside = ((stats_m - m) * inv_temp + stats_z.log()).t()  # each shard's columns outside its top-k
    logz_tail = torch.logsumexp(torch.cat([outside, rest], dim=1), dim=1)
    parts = torch.cat([(cand.gather(1, top) - m[:, None]).mul_(inv_temp), logz_tail[:, None]], dim=1)
    return parts - torch.logsumexp(parts, dim=1, keepdim=True), m, logz_tail


def select_support(gathered: Tensor, k: int, inv_temp: float) -> Support:
    """All shards' blocks [world, n, 4 + 3k] (as one all-gather stacks them) -> the `Support`."""
    t_cand = _candidates(gathered, N_STATS, k)
    s_cand = _candidates(gathered, N_STATS + k, k)
    id_cand = _candidates(gathered, N_STATS + 2 * k, k).contiguous().view(torch.int32).to(torch.int64)
    keys = rank_keys(t_cand, id_cand).masked_fill_(id_cand < 0, _NO_KEY)
    top = keys.topk(k, dim=1).indices
    chosen = torch.zeros_like(keys, dtype=torch.bool).scatter_(1, top, True)
    log_q, m_s, logz_tail = _collapsed(gathered[..., M_S], gathered[..., Z_S], s_cand, chosen, top, inv_temp)
    log_r, _, _ = _collapsed(gathered[..., M_T], gathered[..., Z_T], t_cand, chosen, top, inv_temp)
    # An empty tail (k >= vocabulary) has no column to scale in the backward; keep its factor finite.
    logz_tail = torch.where(torch.isfinite(logz_tail), logz_tail, torch.zeros_like(logz_tail))
    return Support(id_cand.gather(1, top), log_q, log_r, m_s, logz_tail)


def _kl_rows(a: Tensor, log_a: Tensor, log_b: Tensor) -> Tensor:
    """sum_c a_c (log a_c - log b_c) per row, 0 * log 0 = 0."""
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(dim=1)


def category_loss(log_q: Tensor, log_r: Tensor, spec: KLSpec) -> tuple[Tensor, Tensor]:
    """Per-row loss over the k + 1 categories and W_c = d loss / d z_c, the gradient w.r.t. the
    logits z of the collapsed student distribution (log Q_S = z - logsumexp z): the full-vocabulary
    formulas of `vocab_parallel_kl` applied to the categories."""
    q, r = log_q.exp(), log_r.exp()
    if spec.mode == FORWARD:
        return _kl_rows(r, log_r, log_q).clamp_min(0.0), q - r
    if spec.mode == REVERSE:
        kl = _kl_rows(q, log_q, log_r)
        return kl.clamp_min(0.0), torch.where(q > 0, q * (log_q - log_r - kl[:, None]), torch.zeros_like(q))
    beta = spec.beta
    log_m = torch.logaddexp(log_r + math.log(beta), log_q + math.log(1.0 - beta))
    kl_q, kl_r = _kl_rows(q, log_q, log_m), _kl_rows(r, log_r, log_m)
    weight = torch.where(q > 0, (1.0 - beta) * q * (log_q - log_m - kl_q[:, None]), torch.zeros_like(q))
    return beta * kl_r.clamp_min(0.0) + (1.0 - beta) * kl_q.clamp_min(0.0), weight


def shard_backward(student: Tensor, rows: RowSelection, shard: VocabShard, inv_temp: float, support_ids: Tensor,
                   weight: Tensor, m_s: Tensor, logz_tail: Tensor, grad_rows: Tensor, grad: Tensor) -> None:
    """Write d loss / d student for this shard into `grad` (zeros at padding and unselected rows).

    With x = s / T, p_v = P_S(v), the collapsed q_c and g_c = d loss / d q_c: d q_i / d x_v =
    p_v (1[v = i] - p_i) for i in S and, as q_tail = 1 - sum_S p_i, d q_tail / d x_v =
    p_v (1[v not in S] - q_tail). So d loss / d x_v = p_v (g_{c(v)} - sum_c q_c g_c), c(v) the
    category of v. In terms of W_c = q_c (g_c - sum_c' q_c' g_c') (`category_loss`, the gradient
    w.r.t. the categories' logits): d loss / d x_v = W_v for v in S, and
    W_tail * p_v / q_tail = W_tail * exp((s_v - m_s) / T - logz_tail) for v outside S. Both are
    local to the shard holding v; d loss / d s_v = d loss / d x_v / T.
    """
    for chunk in row_chunks(rows, shard.n_valid) if shard.n_valid else ():
        g = read_tile(student, chunk, shard.n_valid)
        slots = chunk.slots
        g.sub_(m_s[slots, None]).mul_(inv_temp).sub_(logz_tail[slots, None]).exp_().mul_(weight[slots, -1:])
        local = support_ids[slots] - shard.start
        r, c = ((local >= 0) & (local < shard.n_valid)).nonzero(as_tuple=True)
        g[r, local[r, c]] = weight[slots][r, c]
        write_tile(grad, chunk, shard.n_valid, g.mul_((grad_rows[slots] * inv_temp)[:, None]))
    zero_unwritten(grad, rows, shard.n_valid)


@dataclass(frozen=True)
class _TopKPlan:
    spec: KLSpec
    k: int
    shard: VocabShard
    rows: RowSelection
    tp: TPGroup


class _TopKTailKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, plan: _TopKPlan) -> Tensor:
        inv_temp = plan.spec.inv_temp
        local = shard_candidates(student, teacher, plan.rows, plan.shard, plan.k, inv_temp)
        support = select_support(plan.tp.gather(local), plan.k, inv_temp)
        loss, weight = category_loss(support.log_q, support.log_r, plan.spec)
        ctx.save_for_backward(student, support.ids, weight, support.m_s, support.logz_tail)
        ctx.plan = plan
        return plan.rows.scatter(loss)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        student, ids, weight, m_s, logz_tail = ctx.saved_tensors
        plan: _TopKPlan = ctx.plan
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad = torch.empty_like(student)
        grad_rows = plan.rows.gather(grad_loss.reshape(-1).float())
        shard_backward(student, plan.rows, plan.shard, plan.spec.inv_temp, ids, weight, m_s, logz_tail, grad_rows,
                       grad)
        return grad, None, None


def check_k(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        fail("k", f"must be an int >= 1 (the number of teacher tokens kept), got {k!r}")
    return k


def topk_tail_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    k: int,
    mode: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    row_mask: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Per-token divergence between the student and teacher distributions restricted to the
    teacher's top-k tokens plus a tail bucket (module doc), fp32, shaped like the logits without
    their vocabulary dim (zero at rows not selected).

    Args:
        student_logits, teacher_logits: [..., V_local] fp32 / bf16 / fp16, same shape and device;
            this rank's contiguous slice of the vocabulary (rank * V_local onwards) under `group`.
        k: how many of the teacher's most likely tokens keep their own category (>= 1); k >= the
            real vocabulary size gives the full-vocabulary divergence.
        mode: "forward" = KL(teacher || student), "reverse" = KL(student || teacher) (default),
            "jsd" = generalised JSD with `beta`.
        beta: JSD interpolation weight of the teacher in the mixture, in [0, 1].
        temperature: both logits are divided by it before the softmax (not for the ranking, which
            it does not change).
        vocab_size: the real, unpadded global vocabulary size; global columns at or beyond it are
            padding, never selected, gradient 0. None: every column is real.
        row_mask: compute only these token rows (bool, shaped like the logits without the vocab dim).
        group: the TP process group the vocabulary is sharded over; None = unsharded. One
            all-gather of [rows, 4 + 3k] floats per rank; the backward communicates nothing.

    The gradient reaches the student logits only; the teacher is a constant (never differentiated).
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_pair(student_logits, teacher_logits)
    k = check_k(k)
    spec = KLSpec.of(mode, beta, check_temperature(temperature))
    tp = TPGroup.of(group)
    lead_shape = student_logits.shape[:-1]
    plan = _TopKPlan(
        spec=spec,
        k=k,
        shard=vocab_shard(student_logits.shape[-1], tp, vocab_size, None),
        rows=select_rows(lead_shape, student_logits.device, row_mask, None),
        tp=tp,
    )
    loss = _TopKTailKL.apply(as_rows(student_logits), as_rows(teacher_logits.detach()), plan)
    return loss.view(lead_shape)
