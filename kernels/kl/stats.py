"""Per-token statistics of the vocab-parallel KL: their layout, how shards combine, and the loss.

Notation (per token): s = student logits, t = teacher logits (raw), T = temperature,
P_S = softmax(s / T), P_T = softmax(t / T), restricted to the real vocabulary.

Each shard reports, per selected token, a float32 [5, tokens] block (`ShardStat`):
  M_S, Z_S  max of the raw s over the shard and sum exp((s - M_S) / T)
  M_T, Z_T  the same for t
  CROSS     sum_j exp((a_j - M_a) / T) * ((a_j - M_a) - (b_j - M_b)) / T, where (a, b) = (t, s)
            for the forward KL and (s, t) for the reverse KL (unused for the JSD, whose terms
            need the global log-normalisers and come from a second pass).
Shards combine exactly (`merge_shard_stats`): maxima by max, sums rescaled by exp((M_r - M) / T),
and the cross term re-centred on the global maxima. Then KL(A||B) = CROSS / Z_a + log Z_b - log Z_a.

After the merge a float32 [6, tokens] block (`RowStat`) is all the backward needs: each shard's
gradient is local, since log P = (x - M) / T - log Z.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from megatron_omni.kernels.common.online_softmax import merge_max_sum
from megatron_omni.kernels.common.validation import fail


class ShardStat(IntEnum):
    M_S = 0
    Z_S = 1
    M_T = 2
    Z_T = 3
    CROSS = 4


class RowStat(IntEnum):
    M_S = 0
    LOGZ_S = 1
    M_T = 2
    LOGZ_T = 3
    KL = 4  # forward/reverse: the KL itself; JSD: KL(P_S || mixture)
    KL_AUX = 5  # JSD only: KL(P_T || mixture)


N_SHARD_STATS = len(ShardStat)
N_JSD_SUMS = 2  # per-shard partial sums of KL(P_S || M) and KL(P_T || M)

FORWARD, REVERSE, JSD = 0, 1, 2  # the kernels' MODE constexpr
MODES = {"forward": FORWARD, "reverse": REVERSE, "jsd": JSD}


@dataclass(frozen=True)
class KLSpec:
    """What is computed. `mode` is FORWARD = KL(P_T || P_S), REVERSE = KL(P_S || P_T) or
    JSD = beta * KL(P_T || M) + (1 - beta) * KL(P_S || M) with M = beta * P_T + (1 - beta) * P_S."""

    mode: int
    beta: float
    inv_temp: float

    @staticmethod
    def of(mode: str, beta: float, temperature: float) -> "KLSpec":
        if mode not in MODES:
            fail("mode", f"must be one of {tuple(MODES)}, got {mode!r}")
        if not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
            fail("beta", f"must lie in [0, 1], got {beta!r}")
        code = MODES[mode]
        # The generalised JSD's limits, as in GKD: beta = 0 is the forward KL, beta = 1 the reverse.
        if code == JSD and beta == 0.0:
            code = FORWARD
        elif code == JSD and beta == 1.0:
            code = REVERSE
        return KLSpec(code, float(beta), 1.0 / temperature)

    @property
    def weighted_by_teacher(self) -> bool:
        """The forward KL's cross term is an expectation under P_T, the reverse KL's under P_S."""
        return self.mode == FORWARD


def log_mixture(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    """log M = log(beta P + (1 - beta) Q) from log-probabilities, as a log-sum-exp: with
    hi = max(log P, log Q), lo the other and w_hi its weight, log M = hi + log(w_hi + (1 - w_hi)
    exp(lo - hi)). Never the log of the probabilities, which underflow fp32 (log P < -104) while
    the mixture of the two does not: log(0) = -inf made the JSD and its gradient inf / NaN. Where
    P = Q it is exactly log P (w_hi + (1 - w_hi) rounds to 1), so identical logits give a JSD of
    exactly 0. -inf only where neither has mass."""
    hi = torch.maximum(log_p, log_q)
    w_hi = torch.where(log_p >= log_q, beta, 1.0 - beta).to(hi.dtype)
    mixed = torch.minimum(log_p, log_q).sub_(hi).exp_().mul_(1.0 - w_hi).add_(w_hi).log_().add_(hi)
    return mixed.masked_fill_(hi == -math.inf, -math.inf)


def merge_shard_stats(stacked: Tensor, spec: KLSpec) -> Tensor:
    """[world, 5, n] per-shard statistics (as one all-gather delivers them) -> global [5, n]."""
    m_s, z_s, alpha_s = merge_max_sum(stacked[:, ShardStat.M_S], stacked[:, ShardStat.Z_S], spec.inv_temp)
    m_t, z_t, alpha_t = merge_max_sum(stacked[:, ShardStat.M_T], stacked[:, ShardStat.Z_T], spec.inv_temp)
    if spec.weighted_by_teacher:
        m_a, m_b, z_a, alpha, glob_a, glob_b = ShardStat.M_T, ShardStat.M_S, ShardStat.Z_T, alpha_t, m_t, m_s
    else:
        m_a, m_b, z_a, alpha, glob_a, glob_b = ShardStat.M_S, ShardStat.M_T, ShardStat.Z_S, alpha_s, m_s, m_t
    shift = ((stacked[:, m_a] - glob_a) - (stacked[:, m_b] - glob_b)) * spec.inv_temp
    cross = (alpha * (stacked[:, ShardStat.CROSS] + stacked[:, z_a] * shift)).sum(dim=0)
    return torch.stack([m_s, z_s, m_t, z_t, cross])


def row_stats_from(merged: Tensor, spec: KLSpec) -> Tensor:
    """Global [5, n] statistics -> the [6, n] row statistics; for forward/reverse KL this
    includes the per-token KL, for JSD the KL slots are filled by `add_jsd_sums`."""
    logz_s = torch.log(merged[ShardStat.Z_S])
    logz_t = torch.log(merged[ShardStat.Z_T])
    kl = torch.zeros_like(logz_s)
    if spec.mode != JSD:
        logz_a, logz_b, z_a = (logz_t, logz_s, merged[ShardStat.Z_T]) if spec.weighted_by_teacher \
            else (logz_s, logz_t, merged[ShardStat.Z_S])
        # Rounding can leave a tiny negative value where the distributions coincide.
        kl = (merged[ShardStat.CROSS] / z_a + (logz_b - logz_a)).clamp_min(0.0)
    return torch.stack([merged[ShardStat.M_S], logz_s, merged[ShardStat.M_T], logz_t, kl, torch.zeros_like(kl)])


def add_jsd_sums(row_stats: Tensor, sums: Tensor) -> Tensor:
    """Fill the JSD slots from the [2, n] global sums (KL(P_S||M), KL(P_T||M))."""
    row_stats = row_stats.clone()
    row_stats[RowStat.KL] = sums[0].clamp_min(0.0)
    row_stats[RowStat.KL_AUX] = sums[1].clamp_min(0.0)
    return row_stats


def loss_from(row_stats: Tensor, spec: KLSpec) -> Tensor:
    """Per-token loss from the row statistics."""
    if spec.mode == JSD:
        return spec.beta * row_stats[RowStat.KL_AUX] + (1.0 - spec.beta) * row_stats[RowStat.KL]
    return row_stats[RowStat.KL]
