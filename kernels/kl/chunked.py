"""Pure-torch chunked implementation of the vocab-parallel KL primitives, with the same signatures
and results as `kl.triton_impl`: used where Triton cannot run. Rows are processed a chunk at a time
and the backward recomputes the probabilities from the logits and the saved row statistics."""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_omni.kernels.common.chunking import RowChunk, centre, read_tile, row_chunks, write_tile, zero_unwritten
from megatron_omni.kernels.common.online_softmax import NEG_START
from megatron_omni.kernels.common.vocab_shards import RowSelection, VocabShard
from megatron_omni.kernels.kl.stats import (
    FORWARD,
    N_JSD_SUMS,
    N_SHARD_STATS,
    REVERSE,
    KLSpec,
    RowStat,
    ShardStat,
    log_mixture,
)


def _weighted_sum(weight: Tensor, values: Tensor) -> Tensor:
    """sum_j weight_j * values_j per row, with weight 0 contributing 0 even where values is inf."""
    return values.masked_fill_(weight == 0, 0.0).mul_(weight).sum(dim=1)


def shard_stats(student: Tensor, teacher: Tensor, rows: RowSelection, shard: VocabShard, spec: KLSpec) -> Tensor:
    out = torch.zeros((N_SHARD_STATS, rows.count), dtype=torch.float32, device=student.device)
    if shard.n_valid == 0:
        out[ShardStat.M_S] = NEG_START
        out[ShardStat.M_T] = NEG_START
        return out
    for chunk in row_chunks(rows, shard.n_valid):
        s, m_s = centre(read_tile(student, chunk, shard.n_valid), spec.inv_temp)
        t, m_t = centre(read_tile(teacher, chunk, shard.n_valid), spec.inv_temp)
        e_s, e_t = torch.exp(s), torch.exp(t)
        out[ShardStat.M_S, chunk.slots] = m_s
        out[ShardStat.Z_S, chunk.slots] = e_s.sum(dim=1)
        out[ShardStat.M_T, chunk.slots] = m_t
        out[ShardStat.Z_T, chunk.slots] = e_t.sum(dim=1)
        if spec.mode == FORWARD:
            out[ShardStat.CROSS, chunk.slots] = _weighted_sum(e_t, t.sub_(s))
        elif spec.mode == REVERSE:
            out[ShardStat.CROSS, chunk.slots] = _weighted_sum(e_s, s.sub_(t))
    return out


def _log_probs(student: Tensor, teacher: Tensor, chunk: RowChunk, shard: VocabShard, spec: KLSpec, row_stats: Tensor):
    """Student and teacher log-probabilities of a chunk under the global normalisers."""
    st = row_stats[:, chunk.slots]
    log_q = read_tile(student, chunk, shard.n_valid)
    log_q.sub_(st[RowStat.M_S][:, None]).mul_(spec.inv_temp).sub_(st[RowStat.LOGZ_S][:, None])
    log_p = read_tile(teacher, chunk, shard.n_valid)
    log_p.sub_(st[RowStat.M_T][:, None]).mul_(spec.inv_temp).sub_(st[RowStat.LOGZ_T][:, None])
    return log_q, log_p, st


def jsd_shard_sums(
    student: Tensor, teacher: Tensor, rows: RowSelection, shard: VocabShard, spec: KLSpec, row_stats: Tensor
) -> Tensor:
    out = torch.zeros((N_JSD_SUMS, rows.count), dtype=torch.float32, device=student.device)
    for chunk in row_chunks(rows, shard.n_valid) if shard.n_valid else ():
        log_q, log_p, _ = _log_probs(student, teacher, chunk, shard, spec, row_stats)
        log_m = log_mixture(log_p, log_q, spec.beta)
        out[0, chunk.slots] = _weighted_sum(torch.exp(log_q), log_q - log_m)
        out[1, chunk.slots] = _weighted_sum(torch.exp(log_p), log_p - log_m)
    return out


def _gradients(log_q: Tensor, log_p: Tensor, st: Tensor, spec: KLSpec, want_s: bool, want_t: bool):
    """fp32 d loss / d (logits / T) of a chunk; see `kl.triton_impl._kl_backward_kernel`."""
    # The reverse KL's student gradient needs no P_T, the forward KL's teacher gradient no P_S.
    q = torch.exp(log_q) if want_s or spec.mode != FORWARD else None
    p = torch.exp(log_p) if want_t or spec.mode != REVERSE else None
    kl, kl_aux = st[RowStat.KL][:, None], st[RowStat.KL_AUX][:, None]
    gs = gt = None
    if spec.mode == FORWARD:
        gs = q - p if want_s else None
        gt = p * (log_p - log_q - kl).masked_fill_(p == 0, 0.0) if want_t else None
    elif spec.mode == REVERSE:
        gs = q * (log_q - log_p - kl).masked_fill_(q == 0, 0.0) if want_s else None
        gt = p - q if want_t else None
    else:
        log_m = log_mixture(log_p, log_q, spec.beta)
        gs = (1.0 - spec.beta) * q * (log_q - log_m - kl).masked_fill_(q == 0, 0.0) if want_s else None
        gt = spec.beta * p * (log_p - log_m - kl_aux).masked_fill_(p == 0, 0.0) if want_t else None
    return gs, gt


def backward(
    student: Tensor, teacher: Tensor, rows: RowSelection, shard: VocabShard, spec: KLSpec,
    row_stats: Tensor, grad_rows: Tensor, grad_student: Tensor | None, grad_teacher: Tensor | None,
) -> None:
    if grad_student is None and grad_teacher is None:
        return
    for chunk in row_chunks(rows, shard.n_valid) if shard.n_valid else ():
        log_q, log_p, st = _log_probs(student, teacher, chunk, shard, spec, row_stats)
        scale = (grad_rows[chunk.slots] * spec.inv_temp)[:, None]
        gs, gt = _gradients(log_q, log_p, st, spec, grad_student is not None, grad_teacher is not None)
        if gs is not None:
            write_tile(grad_student, chunk, shard.n_valid, gs.mul_(scale))
        if gt is not None:
            write_tile(grad_teacher, chunk, shard.n_valid, gt.mul_(scale))
    for grad in (grad_student, grad_teacher):
        if grad is not None:
            zero_unwritten(grad, rows, shard.n_valid)

