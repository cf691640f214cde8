"""Pure-torch chunked implementation of the log-prob / entropy primitives, with the same
signatures and results as `logprob_entropy.triton_impl` (rows a chunk at a time, backward recomputes)."""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_omni.kernels.common.chunking import centre, read_tile, row_chunks, write_tile, zero_unwritten
from megatron_omni.kernels.common.online_softmax import NEG_START
from megatron_omni.kernels.common.vocab_shards import RowSelection, VocabShard
from megatron_omni.kernels.logprob_entropy.stats import N_LP_SHARD_STATS, LPRowStat, LPShardStat


def shard_stats(logits: Tensor, targets: Tensor, rows: RowSelection, shard: VocabShard, inv_temp: float) -> Tensor:
    out = torch.zeros((N_LP_SHARD_STATS, rows.count), dtype=torch.float32, device=logits.device)
    if shard.n_valid == 0:
        out[LPShardStat.M] = NEG_START
        return out
    for chunk in row_chunks(rows, shard.n_valid):
        x = read_tile(logits, chunk, shard.n_valid)
        target = targets[chunk.slots]
        held = target >= 0
        x_target = x.gather(1, target.clamp_min(0)[:, None]).squeeze(1)
        x, m = centre(x, inv_temp)
        e = torch.exp(x)
        out[LPShardStat.M, chunk.slots] = m
        out[LPShardStat.Z, chunk.slots] = e.sum(dim=1)
        out[LPShardStat.CROSS, chunk.slots] = x.masked_fill_(e == 0, 0.0).mul_(e).sum(dim=1)
        out[LPShardStat.TARGET, chunk.slots] = torch.where(held, x_target, 0.0)
    return out


def backward(
    logits: Tensor, targets: Tensor, rows: RowSelection, shard: VocabShard, inv_temp: float,
    row_stats: Tensor, grad_logprob: Tensor, grad_entropy: Tensor, grad_logits: Tensor,
) -> None:
    for chunk in row_chunks(rows, shard.n_valid) if shard.n_valid else ():
        st = row_stats[:, chunk.slots]
        log_p = read_tile(logits, chunk, shard.n_valid)
        log_p.sub_(st[LPRowStat.M][:, None]).mul_(inv_temp).sub_(st[LPRowStat.LOGZ][:, None])
        p = torch.exp(log_p)
        # d log p(y) / dx = onehot(y) - p;  d H / dx = -p (log p + H)
        d_ent = log_p.add_(st[LPRowStat.ENTROPY][:, None]).masked_fill_(p == 0, 0.0).mul_(p)
        g = d_ent.mul_(-grad_entropy[chunk.slots][:, None]).sub_(p.mul_(grad_logprob[chunk.slots][:, None]))
        target = targets[chunk.slots]
        held = (target >= 0).nonzero().squeeze(1)
        g[held, target[held]] += grad_logprob[chunk.slots][held]
        write_tile(grad_logits, chunk, shard.n_valid, g.mul_(inv_temp))
    zero_unwritten(grad_logits, rows, shard.n_valid)
