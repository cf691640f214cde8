"""Per-token statistics of the vocab-parallel log-prob / entropy op and how shards combine.

With raw logits x over the real vocabulary, temperature T and p = softmax(x / T), each shard
reports per selected token a float32 [4, tokens] block (`LPShardStat`):
  M       max of x over the shard;  Z = sum exp((x - M) / T)
  CROSS   sum exp((x - M) / T) * (x - M) / T  (centred: the entropy is no difference of large numbers)
  TARGET  x at the sampled token if this shard holds it, else 0 (exactly one shard holds it).
Merged: log p(target) = (TARGET - M) / T - log Z and entropy H = log Z - CROSS / Z. The backward
then needs only the [3, tokens] row statistics (M, log Z, H) and the target's local column.
"""
from __future__ import annotations

from enum import IntEnum

import torch
from torch import Tensor

from megatron_omni.kernels.common.online_softmax import merge_max_sum


class LPShardStat(IntEnum):
    M = 0
    Z = 1
    CROSS = 2
    TARGET = 3


class LPRowStat(IntEnum):
    M = 0
    LOGZ = 1
    ENTROPY = 2


N_LP_SHARD_STATS = len(LPShardStat)


def merge_lp_shard_stats(stacked: Tensor, inv_temp: float) -> Tensor:
    """[world, 4, n] per-shard statistics -> global [4, n]."""
    m, z, alpha = merge_max_sum(stacked[:, LPShardStat.M], stacked[:, LPShardStat.Z], inv_temp)
    shift = (stacked[:, LPShardStat.M] - m) * inv_temp
    cross = (alpha * (stacked[:, LPShardStat.CROSS] + stacked[:, LPShardStat.Z] * shift)).sum(dim=0)
    return torch.stack([m, z, cross, stacked[:, LPShardStat.TARGET].sum(dim=0)])


def logprob_entropy_from(merged: Tensor, inv_temp: float) -> tuple[Tensor, Tensor, Tensor]:
    """Global statistics -> (log-prob of the target, entropy, [3, n] row statistics)."""
    logz = torch.log(merged[LPShardStat.Z])
    logprob = (merged[LPShardStat.TARGET] - merged[LPShardStat.M]) * inv_temp - logz
    entropy = (logz - merged[LPShardStat.CROSS] / merged[LPShardStat.Z]).clamp_min(0.0)
    return logprob, entropy, torch.stack([merged[LPShardStat.M], logz, entropy])


def local_targets(target_ids: Tensor, start: int, n_valid: int) -> Tensor:
    """Global target ids -> this shard's column of each target, or -1 where another shard holds it."""
    local = target_ids.long() - start
    return local.masked_fill_((local < 0) | (local >= n_valid), -1)
