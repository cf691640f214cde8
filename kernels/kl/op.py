"""Exact full-vocabulary KL / JSD per token between student and teacher logits, with the
vocabulary optionally sharded over a tensor-parallel group, never materialising fp32
[tokens x vocab].

Conventions (on-policy distillation literature; P_S = softmax(student / T), P_T =
softmax(teacher / T), both over the real vocabulary only):
  mode="forward"  KL(P_T || P_S) = sum_v P_T (log P_T - log P_S)   (teacher-weighted, mode covering)
  mode="reverse"  KL(P_S || P_T) = sum_v P_S (log P_S - log P_T)   (student-weighted, mode seeking)
  mode="jsd"      beta * KL(P_T || M) + (1 - beta) * KL(P_S || M), M = beta P_T + (1 - beta) P_S
                  (generalised JSD as in GKD and Liger-Kernel; beta = 0 is taken as the forward
                  KL and beta = 1 as the reverse KL, the limits GKD assigns to them).
The loss is that of the temperature-scaled distributions; any T^2 factor is the caller's choice.

Gradients are local to each vocabulary shard (the all-gathered per-token statistics carry the
global normalisers): d KL(P_T||P_S)/ds = (P_S - P_T)/T and d KL(P_S||P_T)/ds =
P_S (log P_S - log P_T - KL)/T; for the JSD, d/ds = (1-beta) P_S (log P_S - log M - KL(P_S||M))/T.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_omni.kernels.common.backend import Backend, implementation
from megatron_omni.kernels.common.validation import as_rows, check_logits, check_pair, check_temperature, fail
from megatron_omni.kernels.common.vocab_shards import RowSelection, TPGroup, VocabShard, select_rows, vocab_shard
from megatron_omni.kernels.kl.stats import JSD, KLSpec, add_jsd_sums, loss_from, merge_shard_stats, row_stats_from


@dataclass(frozen=True)
class _KLPlan:
    spec: KLSpec
    shard: VocabShard
    rows: RowSelection
    tp: TPGroup
    impl: ModuleType
    inplace_backward: bool


class _VocabParallelKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, plan: _KLPlan) -> Tensor:
        impl, spec = plan.impl, plan.spec
        local = impl.shard_stats(student, teacher, plan.rows, plan.shard, spec)
        row_stats = row_stats_from(merge_shard_stats(plan.tp.gather(local), spec), spec)
        if spec.mode == JSD:  # its mixture needs the global normalisers: a second pass
            sums = plan.tp.sum(impl.jsd_shard_sums(student, teacher, plan.rows, plan.shard, spec, row_stats))
            row_stats = add_jsd_sums(row_stats, sums)
        ctx.save_for_backward(student, teacher, row_stats)
        ctx.plan = plan
        return plan.rows.scatter(loss_from(row_stats, spec))

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        student, teacher, row_stats = ctx.saved_tensors
        plan: _KLPlan = ctx.plan
        want_student, want_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_student = grad_teacher = None
        if want_student:
            grad_student = student if plan.inplace_backward else torch.empty_like(student)
        if want_teacher:
            grad_teacher = torch.empty_like(teacher)
        grad_rows = plan.rows.gather(grad_loss.reshape(-1).float()).contiguous()
        plan.impl.backward(student, teacher, plan.rows, plan.shard, plan.spec, row_stats, grad_rows,
                           grad_student, grad_teacher)
        if plan.inplace_backward and grad_student is not None:
            # The logits now hold their gradient: any other saved use of them must fail loudly.
            torch.autograd.graph.increment_version(student)
        return grad_student, grad_teacher, None


def vocab_parallel_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mode: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    row_mask: Tensor | None = None,
    row_index: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    vocab_start_index: int | None = None,
    inplace_backward: bool = False,
    backend: Backend = "auto",
) -> Tensor:
    """Per-token divergence between student and teacher logits, fp32, shaped like the logits
    without their vocabulary dim (zero at rows not selected).

    Args:
        student_logits, teacher_logits: [..., V_local] fp32 / bf16 / fp16, same shape and device;
            this rank's contiguous slice of the vocabulary when `group` is given.
        mode: "forward" = KL(teacher || student), "reverse" = KL(student || teacher) (default, as
            in on-policy distillation), "jsd" = generalised JSD with `beta` (see module doc).
        beta: JSD interpolation weight of the teacher in the mixture, in [0, 1].
        temperature: both logits are divided by it before the softmax.
        vocab_size: the real, unpadded global vocabulary size; global columns at or beyond it are
            padding and ignored (gradient 0). None: every column is real.
        row_mask / row_index: compute only these token rows: a bool mask shaped like the logits
            without the vocab dim, or unique ids into the flattened rows. Others output 0 and get
            zero gradient.
        group: the TP process group the vocabulary is sharded over; None = unsharded. Per-token
            statistics cross ranks in one all-gather (plus one all-reduce for the JSD).
        vocab_start_index: global id of this rank's first column (default rank * V_local); lets
            shards differ in size.
        inplace_backward: write the student gradient into `student_logits`' storage instead of a
            new [tokens x vocab] buffer. Only when nothing else needs those logits afterwards
            (their version counter is bumped, so a saved use elsewhere raises).
        backend: "auto" (Triton where it can run, else the chunked torch path), "triton", "torch".

    Gradients flow to the student logits, and to the teacher logits when they require grad.
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_pair(student_logits, teacher_logits)
    spec = KLSpec.of(mode, beta, check_temperature(temperature))
    tp = TPGroup.of(group)
    lead_shape = student_logits.shape[:-1]
    plan = _KLPlan(
        spec=spec,
        shard=vocab_shard(student_logits.shape[-1], tp, vocab_size, vocab_start_index),
        rows=select_rows(lead_shape, student_logits.device, row_mask, row_index),
        tp=tp,
        impl=implementation(backend, student_logits.device, "megatron_omni.kernels.kl.triton_impl",
                            "megatron_omni.kernels.kl.chunked"),
        inplace_backward=bool(inplace_backward),
    )
    if inplace_backward and not student_logits.is_contiguous():
        fail("inplace_backward", "needs contiguous student_logits (the gradient is written into them)")
    loss = _VocabParallelKL.apply(as_rows(student_logits), as_rows(teacher_logits), plan)
    return loss.view(lead_shape)
