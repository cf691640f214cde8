"""Per-token log-probability of the sampled token and entropy of the policy, fused and
vocab-parallel (GRPO's inputs), never materialising fp32 [tokens x vocab].

With x = logits / T over the real vocabulary: logprob = x_y - logsumexp(x) and
entropy = -sum_v p_v log p_v. Each rank holds the contiguous vocabulary slice
[rank * V_local, (rank + 1) * V_local) unless `vocab_start_index` says otherwise; target ids are
global. Per-token statistics cross ranks in one all-gather; the backward is local:
d logprob / dx = onehot(y) - p and d entropy / dx = -p (log p + H), each times 1/T.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_omni.kernels.common.backend import Backend, implementation
from megatron_omni.kernels.common.validation import as_rows, check_logits, check_temperature, fail
from megatron_omni.kernels.common.vocab_shards import RowSelection, TPGroup, VocabShard, select_rows, vocab_shard
from megatron_omni.kernels.logprob_entropy.stats import local_targets, logprob_entropy_from, merge_lp_shard_stats


@dataclass(frozen=True)
class _LPPlan:
    inv_temp: float
    shard: VocabShard
    rows: RowSelection
    tp: TPGroup
    impl: ModuleType


class _VocabParallelLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, plan: _LPPlan):
        local = plan.impl.shard_stats(logits, targets, plan.rows, plan.shard, plan.inv_temp)
        merged = merge_lp_shard_stats(plan.tp.gather(local), plan.inv_temp)
        logprob, entropy, row_stats = logprob_entropy_from(merged, plan.inv_temp)
        ctx.save_for_backward(logits, targets, row_stats)
        ctx.plan = plan
        return plan.rows.scatter(logprob), plan.rows.scatter(entropy)

    @staticmethod
    def backward(ctx, grad_logprob: Tensor, grad_entropy: Tensor):
        logits, targets, row_stats = ctx.saved_tensors
        plan: _LPPlan = ctx.plan
        grad_logits = torch.empty_like(logits)
        plan.impl.backward(
            logits, targets, plan.rows, plan.shard, plan.inv_temp, row_stats,
            plan.rows.gather(grad_logprob.reshape(-1).float()).contiguous(),
            plan.rows.gather(grad_entropy.reshape(-1).float()).contiguous(),
            grad_logits,
        )
        return grad_logits, None, None


def _check_targets(target_ids: object, lead_shape: torch.Size, device: torch.device) -> Tensor:
    if not isinstance(target_ids, Tensor) or target_ids.dtype not in (torch.int32, torch.int64):
        fail("target_ids", f"must be an int32/int64 tensor, got {getattr(target_ids, 'dtype', type(target_ids))}")
    if tuple(target_ids.shape) != tuple(lead_shape):
        fail("target_ids", f"shape {tuple(target_ids.shape)} must equal the logits' leading shape {tuple(lead_shape)}")
    if target_ids.device != device:
        fail("target_ids", f"is on {target_ids.device}, the logits on {device}")
    return target_ids


def _check_target_range(targets: Tensor, upper: int | None) -> None:
    if targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or (upper is not None and high >= upper):
        fail("target_ids", f"values must lie in [0, {upper}), got [{low}, {high}] on the selected rows")


def vocab_parallel_logprob_entropy(
    logits: Tensor,
    target_ids: Tensor,
    group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    *,
    vocab_size: int | None = None,
    row_mask: Tensor | None = None,
    row_index: Tensor | None = None,
    vocab_start_index: int | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """(log p(target), entropy) per token, both fp32 shaped like `target_ids` (zero at rows not
    selected), differentiable w.r.t. `logits`.

    Args:
        logits: [..., V_local] fp32 / bf16 / fp16, this rank's vocabulary slice under `group`.
        target_ids: [...] global vocabulary ids of the sampled tokens.
        group: the TP process group the vocabulary is sharded over; None = unsharded.
        temperature: logits are divided by it (the sampling temperature).
        vocab_size: the real, unpadded global vocabulary size; columns at or beyond it are ignored.
        row_mask / row_index: compute only these token rows (as in `vocab_parallel_kl`).
        vocab_start_index: global id of this rank's first column (default rank * V_local).
        backend: "auto", "triton" or "torch" (chunked).
    """
    check_logits("logits", logits)
    lead_shape = logits.shape[:-1]
    _check_targets(target_ids, lead_shape, logits.device)
    tp = TPGroup.of(group)
    n_cols = logits.shape[-1]
    plan = _LPPlan(
        inv_temp=1.0 / check_temperature(temperature),
        shard=vocab_shard(n_cols, tp, vocab_size, vocab_start_index),
        rows=select_rows(lead_shape, logits.device, row_mask, row_index),
        tp=tp,
        impl=implementation(backend, logits.device, "megatron_omni.kernels.logprob_entropy.triton_impl",
                            "megatron_omni.kernels.logprob_entropy.chunked"),
    )
    targets = plan.rows.gather(target_ids.reshape(-1))
    upper = vocab_size if vocab_size is not None else (tp.world_size * n_cols if vocab_start_index is None else None)
    _check_target_range(targets, upper)
    local = local_targets(targets, plan.shard.start, plan.shard.n_valid)
    logprob, entropy = _VocabParallelLogprobEntropy.apply(as_rows(logits), local, plan)
    return logprob.view(lead_shape), entropy.view(lead_shape)
