"""Triton kernels of the vocab-parallel KL: one streaming pass for per-shard statistics, the JSD's
second pass, and the local backward. Each program owns a tile of token rows and walks the shard's
vocabulary in column tiles; inputs are cast to fp32 right after loading, and nothing of size
[tokens x vocab] is written except the gradients themselves.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from megatron_omni.kernels.common.online_softmax import NEG_START
from megatron_omni.kernels.common.triton_common import (
    all_rows_tile,
    centred_cross_step,
    launch_tiles,
    load_rows,
    n_programs,
    online_lse_step,
    row_tile,
)
from megatron_omni.kernels.common.vocab_shards import RowSelection, VocabShard
from megatron_omni.kernels.kl.stats import N_JSD_SUMS, N_SHARD_STATS, KLSpec


@triton.jit
def _kl_stats_kernel(
    s_ptr, t_ptr, index_ptr, out_ptr,
    n_sel, n_load, n_valid, stride_s, stride_t, inv_temp,
    HAS_INDEX: tl.constexpr, MODE: tl.constexpr, NEG: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    slots, rows, in_range = row_tile(tl.program_id(0), index_ptr, n_sel, HAS_INDEX, BLOCK_R)
    m_s = tl.full([BLOCK_R], NEG, tl.float32)
    m_t = tl.full([BLOCK_R], NEG, tl.float32)
    z_s = tl.zeros([BLOCK_R], tl.float32)
    z_t = tl.zeros([BLOCK_R], tl.float32)
    cross = tl.zeros([BLOCK_R], tl.float32)
    for v0 in range(0, n_load, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        s = load_rows(s_ptr, rows, stride_s, cols, in_range, n_load, n_valid)
        t = load_rows(t_ptr, rows, stride_t, cols, in_range, n_load, n_valid)
        z_s_old = z_s
        z_t_old = z_t
        m_s_new, z_s, e_s, alpha_s = online_lse_step(m_s, z_s, s, inv_temp)
        m_t_new, z_t, e_t, alpha_t = online_lse_step(m_t, z_t, t, inv_temp)
        d_ts = ((t - m_t_new[:, None]) - (s - m_s_new[:, None])) * inv_temp
        shift_ts = ((m_t - m_t_new) - (m_s - m_s_new)) * inv_temp
        if MODE == 0:  # forward: expectation under P_T of ((t - M_T) - (s - M_S)) / T
            cross = centred_cross_step(cross, z_t_old, alpha_t, shift_ts, e_t, d_ts)
        elif MODE == 1:  # reverse: expectation under P_S of ((s - M_S) - (t - M_T)) / T
            cross = centred_cross_step(cross, z_s_old, alpha_s, -shift_ts, e_s, -d_ts)
        m_s = m_s_new
        m_t = m_t_new
    tl.store(out_ptr + 0 * n_sel + slots, m_s, mask=in_range)
    tl.store(out_ptr + 1 * n_sel + slots, z_s, mask=in_range)
    tl.store(out_ptr + 2 * n_sel + slots, m_t, mask=in_range)
    tl.store(out_ptr + 3 * n_sel + slots, z_t, mask=in_range)
    tl.store(out_ptr + 4 * n_sel + slots, cross, mask=in_range)


@triton.jit
def _row_stat(stats_ptr, k: tl.constexpr, slots, n_sel, live):
    """Row statistic k (`kl.stats.RowStat`) of this program's rows."""
    return tl.load(stats_ptr + k * n_sel + slots, mask=live, other=0.0)


@triton.jit
def _log_probs(s, t, m_s, logz_s, m_t, logz_t, inv_temp):
    """Log-probabilities of the student and teacher tiles under the global normalisers."""
    return (s - m_s[:, None]) * inv_temp - logz_s[:, None], (t - m_t[:, None]) * inv_temp - logz_t[:, None]


@triton.jit
def _log_mixture(log_q, log_p, beta):
    """log M = log(beta P_T + (1 - beta) P_S) as a log-sum-exp (`kl.stats.log_mixture`), never
    the log of exp(log P): where both probabilities underflow fp32 (log P < -104, e.g. near
    one-hot distributions on different tokens) and one is still > 0, log(0) = -inf made the JSD
    and its gradient inf / NaN. -inf only where neither has mass."""
    hi = tl.maximum(log_p, log_q)
    w_hi = tl.where(log_p >= log_q, beta, 1.0 - beta)
    mixed = hi + tl.log(w_hi + (1.0 - w_hi) * tl.exp(tl.minimum(log_p, log_q) - hi))
    return tl.where(hi > float("-inf"), mixed, float("-inf"))


@triton.jit
def _jsd_sums_kernel(
    s_ptr, t_ptr, index_ptr, stats_ptr, out_ptr,
    n_sel, n_load, n_valid, stride_s, stride_t, inv_temp, beta,
    HAS_INDEX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    slots, rows, in_range = row_tile(tl.program_id(0), index_ptr, n_sel, HAS_INDEX, BLOCK_R)
    m_s = _row_stat(stats_ptr, 0, slots, n_sel, in_range)
    logz_s = _row_stat(stats_ptr, 1, slots, n_sel, in_range)
    m_t = _row_stat(stats_ptr, 2, slots, n_sel, in_range)
    logz_t = _row_stat(stats_ptr, 3, slots, n_sel, in_range)
    kl_sm = tl.zeros([BLOCK_R], tl.float32)
    kl_tm = tl.zeros([BLOCK_R], tl.float32)
    for v0 in range(0, n_load, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        s = load_rows(s_ptr, rows, stride_s, cols, in_range, n_load, n_valid)
        t = load_rows(t_ptr, rows, stride_t, cols, in_range, n_load, n_valid)
        log_q, log_p = _log_probs(s, t, m_s, logz_s, m_t, logz_t, inv_temp)
        log_m = _log_mixture(log_q, log_p, beta)
        q = tl.exp(log_q)
        p = tl.exp(log_p)
        kl_sm += tl.sum(tl.where(q > 0, q * (log_q - log_m), 0.0), axis=1)
        kl_tm += tl.sum(tl.where(p > 0, p * (log_p - log_m), 0.0), axis=1)
    tl.store(out_ptr + slots, kl_sm, mask=in_range)
    tl.store(out_ptr + n_sel + slots, kl_tm, mask=in_range)


@triton.jit
def _kl_backward_kernel(
    s_ptr, t_ptr, gs_ptr, gt_ptr, slot_ptr, gout_ptr, stats_ptr,
    n_rows, n_sel, n_cols, n_load, n_valid, stride_s, stride_t, stride_gs, stride_gt, inv_temp, beta,
    HAS_SLOTS: tl.constexpr, MODE: tl.constexpr, WRITE_S: tl.constexpr, WRITE_T: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows, slots, in_range, live = all_rows_tile(tl.program_id(0), slot_ptr, n_rows, HAS_SLOTS, BLOCK_R)
    # d loss / d logits carries 1/T from logits / T.
    g = tl.load(gout_ptr + slots, mask=live, other=0.0) * inv_temp
    m_s = _row_stat(stats_ptr, 0, slots, n_sel, live)
    logz_s = _row_stat(stats_ptr, 1, slots, n_sel, live)
    m_t = _row_stat(stats_ptr, 2, slots, n_sel, live)
    logz_t = _row_stat(stats_ptr, 3, slots, n_sel, live)
    kl = _row_stat(stats_ptr, 4, slots, n_sel, live)
    kl_aux = _row_stat(stats_ptr, 5, slots, n_sel, live)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        valid = live[:, None] & (cols < n_valid)[None, :]
        out_mask = in_range[:, None] & (cols < n_cols)[None, :]
        s = load_rows(s_ptr, rows, stride_s, cols, live, n_load, n_valid)
        t = load_rows(t_ptr, rows, stride_t, cols, live, n_load, n_valid)
        log_q, log_p = _log_probs(s, t, m_s, logz_s, m_t, logz_t, inv_temp)
        q = tl.exp(log_q)
        p = tl.exp(log_p)
        # Gradient of KL(A || B): w.r.t. A's logits A * (log A - log B - KL), w.r.t. B's (B - A).
        if MODE == 0:
            gs = q - p
            gt = tl.where(p > 0, p * (log_p - log_q - kl[:, None]), 0.0)
        elif MODE == 1:
            gs = tl.where(q > 0, q * (log_q - log_p - kl[:, None]), 0.0)
            gt = p - q
        else:
            log_m = _log_mixture(log_q, log_p, beta)
            gs = tl.where(q > 0, (1.0 - beta) * q * (log_q - log_m - kl[:, None]), 0.0)
            gt = tl.where(p > 0, beta * p * (log_p - log_m - kl_aux[:, None]), 0.0)
        if WRITE_S:
            gs = tl.where(valid, gs * g[:, None], 0.0)
            tl.store(gs_ptr + rows[:, None] * stride_gs + cols[None, :], gs.to(gs_ptr.dtype.element_ty), mask=out_mask)
        if WRITE_T:
            gt = tl.where(valid, gt * g[:, None], 0.0)
            tl.store(gt_ptr + rows[:, None] * stride_gt + cols[None, :], gt.to(gt_ptr.dtype.element_ty), mask=out_mask)


def _index_arg(rows: RowSelection, like: Tensor) -> Tensor:
    return rows.index if rows.index is not None else like


def shard_stats(student: Tensor, teacher: Tensor, rows: RowSelection, shard: VocabShard, spec: KLSpec) -> Tensor:
    """[5, selected rows] statistics of this shard (layout: `kl.stats.ShardStat`)."""
    out = torch.empty((N_SHARD_STATS, rows.count), dtype=torch.float32, device=student.device)
    if rows.count == 0:
        return out
    tile = launch_tiles(shard.n_valid)
    _kl_stats_kernel[n_programs(rows.count, tile)](
        student, teacher, _index_arg(rows, out), out,
        rows.count, shard.n_load, shard.n_valid, student.stride(0), teacher.stride(0), spec.inv_temp,
        HAS_INDEX=rows.index is not None, MODE=spec.mode, NEG=NEG_START,
        BLOCK_R=tile.rows, BLOCK_V=tile.cols, num_warps=tile.num_warps,
    )
    return out


def jsd_shard_sums(
    student: Tensor, teacher: Tensor, rows: RowSelection, shard: VocabShard, spec: KLSpec, row_stats: Tensor
) -> Tensor:
    """[2, selected rows] partial sums of KL(P_S || M) and KL(P_T || M) over this shard."""
    out = torch.empty((N_JSD_SUMS, rows.count), dtype=torch.float32, device=student.device)
    if rows.count == 0:
        return out
    tile = launch_tiles(shard.n_valid)
    _jsd_sums_kernel[n_programs(rows.count, tile)](
        student, teacher, _index_arg(rows, out), row_stats.contiguous(), out,
        rows.count, shard.n_load, shard.n_valid, student.stride(0), teacher.stride(0), spec.inv_temp, spec.beta,
        HAS_INDEX=rows.index is not None, BLOCK_R=tile.rows, BLOCK_V=tile.cols, num_warps=tile.num_warps,
    )
    return out


def backward(
    student: Tensor, teacher: Tensor, rows: RowSelection, shard: VocabShard, spec: KLSpec,
    row_stats: Tensor, grad_rows: Tensor, grad_student: Tensor | None, grad_teacher: Tensor | None,
) -> None:
    """Write d loss / d logits of this shard into `grad_student` / `grad_teacher` ([rows, cols],
    every element, zeros for unselected rows and padding). `grad_rows` is d total / d loss per
    selected row."""
    if grad_student is None and grad_teacher is None:
        return
    slots = rows.slots()
    tile = launch_tiles(shard.n_cols)
    gs = grad_student if grad_student is not None else student
    gt = grad_teacher if grad_teacher is not None else teacher
    _kl_backward_kernel[n_programs(rows.n_rows, tile)](
        student, teacher, gs, gt, slots if slots is not None else grad_rows, grad_rows.contiguous(),
        row_stats.contiguous(),
        rows.n_rows, rows.count, shard.n_cols, shard.n_load, shard.n_valid, student.stride(0), teacher.stride(0),
        gs.stride(0), gt.stride(0), spec.inv_temp, spec.beta,
        HAS_SLOTS=slots is not None, MODE=spec.mode, WRITE_S=grad_student is not None,
        WRITE_T=grad_teacher is not None, BLOCK_R=tile.rows, BLOCK_V=tile.cols, num_warps=tile.num_warps,
    )

