"""Triton kernels of the vocab-parallel log-prob / entropy op: one streaming pass for per-shard
statistics and the local backward (layouts in `logprob_entropy.stats`)."""
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
from megatron_omni.kernels.logprob_entropy.stats import N_LP_SHARD_STATS


@triton.jit
def _lp_stats_kernel(
    x_ptr, index_ptr, target_ptr, out_ptr,
    n_sel, n_load, n_valid, stride_x, inv_temp,
    HAS_INDEX: tl.constexpr, NEG: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    slots, rows, in_range = row_tile(tl.program_id(0), index_ptr, n_sel, HAS_INDEX, BLOCK_R)
    m = tl.full([BLOCK_R], NEG, tl.float32)
    z = tl.zeros([BLOCK_R], tl.float32)
    cross = tl.zeros([BLOCK_R], tl.float32)
    for v0 in range(0, n_load, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = load_rows(x_ptr, rows, stride_x, cols, in_range, n_load, n_valid)
        z_old = z
        m_new, z, e, alpha = online_lse_step(m, z, x, inv_temp)
        cross = centred_cross_step(cross, z_old, alpha, (m - m_new) * inv_temp, e, (x - m_new[:, None]) * inv_temp)
        m = m_new
    target = tl.load(target_ptr + slots, mask=in_range, other=-1)
    held = in_range & (target >= 0)
    x_target = tl.load(x_ptr + rows * stride_x + tl.where(held, target, 0), mask=held, other=0.0)
    tl.store(out_ptr + 0 * n_sel + slots, m, mask=in_range)
    tl.store(out_ptr + 1 * n_sel + slots, z, mask=in_range)
    tl.store(out_ptr + 2 * n_sel + slots, cross, mask=in_range)
    tl.store(out_ptr + 3 * n_sel + slots, x_target.to(tl.float32), mask=in_range)


@triton.jit
def _lp_backward_kernel(
    x_ptr, gx_ptr, slot_ptr, target_ptr, g_lp_ptr, g_ent_ptr, stats_ptr,
    n_rows, n_sel, n_cols, n_load, n_valid, stride_x, stride_gx, inv_temp,
    HAS_SLOTS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows, slots, in_range, live = all_rows_tile(tl.program_id(0), slot_ptr, n_rows, HAS_SLOTS, BLOCK_R)
    g_lp = tl.load(g_lp_ptr + slots, mask=live, other=0.0) * inv_temp
    g_ent = tl.load(g_ent_ptr + slots, mask=live, other=0.0) * inv_temp
    m = tl.load(stats_ptr + slots, mask=live, other=0.0)
    logz = tl.load(stats_ptr + n_sel + slots, mask=live, other=0.0)
    entropy = tl.load(stats_ptr + 2 * n_sel + slots, mask=live, other=0.0)
    target = tl.load(target_ptr + slots, mask=live, other=-1)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        valid = live[:, None] & (cols < n_valid)[None, :]
        x = load_rows(x_ptr, rows, stride_x, cols, live, n_load, n_valid)
        log_p = (x - m[:, None]) * inv_temp - logz[:, None]
        p = tl.exp(log_p)
        # d log p(y) / dx = onehot(y) - p;  d H / dx = -p (log p + H)
        onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
        d_ent = tl.where(p > 0, p * (log_p + entropy[:, None]), 0.0)
        g = tl.where(valid, g_lp[:, None] * (onehot - p) - g_ent[:, None] * d_ent, 0.0)
        tl.store(gx_ptr + rows[:, None] * stride_gx + cols[None, :], g.to(gx_ptr.dtype.element_ty),
                 mask=in_range[:, None] & (cols < n_cols)[None, :])


def shard_stats(logits: Tensor, targets: Tensor, rows: RowSelection, shard: VocabShard, inv_temp: float) -> Tensor:
    """[4, selected rows] statistics of this shard; `targets` are local columns or -1."""
    out = torch.empty((N_LP_SHARD_STATS, rows.count), dtype=torch.float32, device=logits.device)
    if rows.count == 0:
        return out
    tile = launch_tiles(shard.n_valid)
    _lp_stats_kernel[n_programs(rows.count, tile)](
        logits, rows.index if rows.index is not None else out, targets.contiguous(), out,
        rows.count, shard.n_load, shard.n_valid, logits.stride(0), inv_temp,
        HAS_INDEX=rows.index is not None, NEG=NEG_START, BLOCK_R=tile.rows, BLOCK_V=tile.cols,
        num_warps=tile.num_warps,
    )
    return out


def backward(
    logits: Tensor, targets: Tensor, rows: RowSelection, shard: VocabShard, inv_temp: float,
    row_stats: Tensor, grad_logprob: Tensor, grad_entropy: Tensor, grad_logits: Tensor,
) -> None:
    """Write d total / d logits of this shard into `grad_logits` (every element)."""
    slots = rows.slots()
    tile = launch_tiles(shard.n_cols)
    _lp_backward_kernel[n_programs(rows.n_rows, tile)](
        logits, grad_logits, slots if slots is not None else targets, targets.contiguous(),
        grad_logprob.contiguous(), grad_entropy.contiguous(), row_stats.contiguous(),
        rows.n_rows, rows.count, shard.n_cols, shard.n_load, shard.n_valid, logits.stride(0), grad_logits.stride(0),
        inv_temp,
        HAS_SLOTS=slots is not None, BLOCK_R=tile.rows, BLOCK_V=tile.cols, num_warps=tile.num_warps,
    )
