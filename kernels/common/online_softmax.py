"""Combining per-shard softmax statistics, in torch (the Triton kernels do the same per tile).

A shard summarises a row of raw logits x by its max m and z = sum exp((x - m) / T). Shards merge
exactly: M = max_r m_r, Z = sum_r exp((m_r - M) / T) * z_r, so logsumexp(x / T) = M / T + log Z.
"""
from __future__ import annotations

from torch import Tensor

# Running-max value of a shard with no real column: finite, so that exp(NEG_START - M) = 0 and
# exp(NEG_START - NEG_START) = 1 instead of NaN.
NEG_START = -1.0e30


def merge_max_sum(m: Tensor, z: Tensor, inv_temp: float) -> tuple[Tensor, Tensor, Tensor]:
    """[world, n] maxima and sum-exps -> global (M, Z) and each shard's rescale exp((m_r - M) / T)."""
    m_glob = m.max(dim=0).values
    alpha = ((m - m_glob) * inv_temp).exp()
    return m_glob, (alpha * z).sum(dim=0), alpha
