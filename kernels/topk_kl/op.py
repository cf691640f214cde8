"""KL / JSD per token between the student's and the teacher's distributions collapsed onto the
teacher's top-k tokens plus one tail bucket, with the vocabulary optionally sharded over a
tensor-parallel group, never materialising fp32 [tokens x vocab].

Conventions (those of `vocab_parallel_kl`): P_S = softmax(student / T), P_T = softmax(teacher / T)
over the real vocabulary (global columns >= vocab_size are padding, ignored). Per token:
  S     the k token ids with the largest raw teacher logits over the whole vocabulary (all TP
        shards); ties go to the lower id, so S depends neither on the sharding nor on the order
        a top-k routine returns equal values in. With k >= the real vocabulary S is all of it.
  Q_S   P_S collapsed onto k + 1 categories: P_S(i) for i in S, and the tail
        P_S(not S) = 1 - sum_{i in S} P_S(i); Q_T likewise from P_T.
  mode="forward"  KL(Q_T || Q_S)
  mode="reverse"  KL(Q_S || Q_T)
  mode="jsd"      beta * KL(Q_T || M) + (1 - beta) * KL(Q_S || M), M = beta Q_T + (1 - beta) Q_S
                  (beta = 0 is the forward KL and beta = 1 the reverse KL, as in vocab_parallel_kl).
The tail is never formed as 1 - sum (which cancels when S holds nearly all the mass): its log is
the logsumexp of the logits outside S minus that of all logits, exact down to tails far below
fp32's smallest number. An empty tail (k >= vocabulary) has probability 0 under both
distributions and contributes nothing, so the loss is then `vocab_parallel_kl`'s.

The teacher is a constant: its logits are read without autograd (no gradient reaches them, even
when they require grad; S is a piecewise-constant function of them anyway).

Memory: rows are processed a chunk at a time (`common.chunking`); across chunks and ranks only
per-row values travel: each shard's softmax statistics over its columns outside its local top-k,
and its k candidates (teacher logit, student logit, global id). One all-gather exchanges them;
the global top-k, the normalisers and the k + 1 category probabilities follow from them exactly
(the global top-k lies among the local ones), in per-row tensors of world * k candidates.
The backward recomputes the student softmax chunk by chunk from the saved logits and per-row
values and needs no communication.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_omni.kernels.common.validation import as_rows, check_logits, check_pair, check_temperature, fail
from megatron_omni.kernels.common.vocab_shards import RowSelection, TPGroup, VocabShard, select_rows, vocab_shard
from megatron_omni.kernels.kl.stats import KLSpec
from megatron_omni.kernels.topk_kl.chunked import shard_backward, shard_candidates
from megatron_omni.kernels.topk_kl.stats import category_loss, select_support


@dataclass(frozen=True)
class _TopKPlan:
    spec: KLSpec
    k: int
    shard: VocabShard
    rows: RowSelection
    tp: TPGroup


class _TopKTailKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, plan: _TopKPlan) -> Tensor:
        inv_temp = plan.spec.inv_temp
        local = shard_candidates(student, teacher, plan.rows, plan.shard, plan.k, inv_temp)
        support = select_support(plan.tp.gather(local), plan.k, inv_temp)
        loss, weight = category_loss(support.log_q, support.log_r, plan.spec)
        ctx.save_for_backward(student, support.ids, weight, support.m_s, support.logz_tail)
        ctx.plan = plan
        return plan.rows.scatter(loss)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        student, ids, weight, m_s, logz_tail = ctx.saved_tensors
        plan: _TopKPlan = ctx.plan
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad = torch.empty_like(student)
        grad_rows = plan.rows.gather(grad_loss.reshape(-1).float())
        shard_backward(student, plan.rows, plan.shard, plan.spec.inv_temp, ids, weight, m_s, logz_tail, grad_rows,
                       grad)
        return grad, None, None


def check_k(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        fail("k", f"must be an int >= 1 (the number of teacher tokens kept), got {k!r}")
    return k


def topk_tail_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    k: int,
    mode: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    row_mask: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Per-token divergence between the student and teacher distributions restricted to the
    teacher's top-k tokens plus a tail bucket (module doc), fp32, shaped like the logits without
    their vocabulary dim (zero at rows not selected).

    Args:
        student_logits, teacher_logits: [..., V_local] fp32 / bf16 / fp16, same shape and device;
            this rank's contiguous slice of the vocabulary (rank * V_local onwards) under `group`.
        k: how many of the teacher's most likely tokens keep their own category (>= 1); k >= the
            real vocabulary size gives the full-vocabulary divergence.
        mode: "forward" = KL(teacher || student), "reverse" = KL(student || teacher) (default),
            "jsd" = generalised JSD with `beta`.
        beta: JSD interpolation weight of the teacher in the mixture, in [0, 1].
        temperature: both logits are divided by it before the softmax (not for the ranking, which
            it does not change).
        vocab_size: the real, unpadded global vocabulary size; global columns at or beyond it are
            padding, never selected, gradient 0. None: every column is real.
        row_mask: compute only these token rows (bool, shaped like the logits without the vocab dim).
        group: the TP process group the vocabulary is sharded over; None = unsharded. One
            all-gather of [rows, 4 + 3k] floats per rank; the backward communicates nothing.

    The gradient reaches the student logits only; the teacher is a constant (never differentiated).
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_pair(student_logits, teacher_logits)
    k = check_k(k)
    spec = KLSpec.of(mode, beta, check_temperature(temperature))
    tp = TPGroup.of(group)
    lead_shape = student_logits.shape[:-1]
    plan = _TopKPlan(
        spec=spec,
        k=k,
        shard=vocab_shard(student_logits.shape[-1], tp, vocab_size, None),
        rows=select_rows(lead_shape, student_logits.device, row_mask, None),
        tp=tp,
    )
    loss = _TopKTailKL.apply(as_rows(student_logits), as_rows(teacher_logits.detach()), plan)
    return loss.view(lead_shape)
