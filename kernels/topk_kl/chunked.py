"""The per-shard primitives of `topk_tail_kl` in pure torch (there is no Triton kernel: the top-k
needs a sort-like pass per chunk): a shard's candidate block, and the local backward. Rows are
processed a chunk at a time (`common.chunking`), never materialising fp32 [tokens x vocab]."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from megatron_omni.kernels.common.chunking import read_tile, row_chunks, write_tile, zero_unwritten
from megatron_omni.kernels.common.online_softmax import NEG_START
from megatron_omni.kernels.common.vocab_shards import RowSelection, VocabShard
from megatron_omni.kernels.topk_kl.stats import M_S, M_T, N_STATS, Z_S, Z_T


def local_top(teacher: Tensor, k: int) -> Tensor:
    """Columns of the k largest values per row of an fp32 tile, ties to the lower column: the
    order of `stats.rank_keys` without its [rows x columns] int64 keys. A float top-k fixes the k-th
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
    """This shard's [rows, 4 + 3k] block for the selected rows (layout in `stats`)."""
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
