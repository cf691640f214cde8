"""The OmniOPSD distillation loss: a per-token divergence between student and teacher over the
full (TP-sharded) vocabulary, through the fused vocab-parallel kernels.

Input contract of ``DistillationLoss`` (rows = completion tokens, the same token in both):
  student_logits  [N, V_local] with grad, this rank's vocabulary shard, model dtype
  teacher_logits  [N, V_local] no grad, the same rows and shard (never gathered, never fp32)
It returns the token *sum* and the token count, so megatron normalises by the completion tokens
of the whole global batch, and a [sum, count] metric of the mean divergence.
"""
from __future__ import annotations

import torch

from megatron_omni.algorithms.opsd.config import DistillationLossConfig
from megatron_omni.algorithms.step_common import token_sum_loss
from megatron_omni.kernels import topk_tail_kl, vocab_parallel_kl


class DistillationLoss:
    def __init__(self, cfg: DistillationLossConfig, vocab_size: int, group=None):
        self.cfg, self.vocab_size, self.group = cfg, vocab_size, group

    def per_token(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        # The teacher is a target: no gradient reaches it even when it is the student itself.
        teacher_logits = teacher_logits.detach()
        if c.top_k is None:
            return vocab_parallel_kl(student_logits, teacher_logits, mode=c.divergence, beta=c.beta,
                                     temperature=c.temperature, vocab_size=self.vocab_size, group=self.group)
        return topk_tail_kl(student_logits, teacher_logits, k=c.top_k, mode=c.divergence, beta=c.beta,
                            temperature=c.temperature, vocab_size=self.vocab_size, group=self.group)

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor):
        per_token = self.per_token(student_logits, teacher_logits)
        return token_sum_loss(per_token.sum(), per_token.new_tensor(float(per_token.numel())), "distill_kl")
