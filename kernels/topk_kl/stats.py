"""Per-row values of `topk_tail_kl`: the layout of a shard's block, how the shards' blocks combine
into the global top-k support exactly, and the loss over the k + 1 categories.

A shard reports, per selected row, its softmax statistics over its columns outside its local
top-k and its k candidates (`chunked.shard_candidates`). The global top-k lies among the local
ones, so one all-gather of these blocks gives the support, both normalisers and the k + 1 category
probabilities exactly (`select_support`); `category_loss` then applies the full-vocabulary
formulas of `vocab_parallel_kl` to the categories.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_omni.kernels.kl.stats import FORWARD, REVERSE, KLSpec, log_mixture

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
    log_m = log_mixture(log_r, log_q, beta)
    kl_q, kl_r = _kl_rows(q, log_q, log_m), _kl_rows(r, log_r, log_m)
    weight = torch.where(q > 0, (1.0 - beta) * q * (log_q - log_m - kl_q[:, None]), torch.zeros_like(q))
    return beta * kl_r.clamp_min(0.0) + (1.0 - beta) * kl_q.clamp_min(0.0), weight
