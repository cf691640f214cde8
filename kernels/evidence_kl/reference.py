"""Pure-torch reference of `evidence_masked_kl`: the Omni-Perception loss written directly with
`kl_reference` (dense log_softmax, autograd), the tests' oracle and the benchmark's eager baseline."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from megatron_omni.kernels.evidence_kl.op import SIGNS
from megatron_omni.kernels.kl.reference import kl_reference


def _mean_over(values: Tensor, mask: Tensor) -> Tensor:
    return values[mask].mean() if bool(mask.any()) else values.sum() * 0.0


def evidence_masked_kl_reference(
    full_logits: Tensor,
    masked_logits: Mapping[str, Tensor],
    evidence_masks: Mapping[str, Tensor],
    *,
    gamma: float = 5e-4,
    sign: str = "reward_divergence",
    entropy: Tensor | None = None,
    eta: float = 0.0,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The scalar loss s * gamma * sum_m mean_{evidence_m} KL(pi_full || pi_m masked)
    + eta * mean_{any evidence} H, computed in `dtype`; gradients reach `full_logits` (and
    `entropy`) only. ``masked_logits[m]`` is shaped like `full_logits` or holds the rows of
    ``evidence_masks[m]`` only, as in `evidence_masked_kl`."""
    kl_sum = full_logits.new_zeros((), dtype=dtype)
    for modality, masked in masked_logits.items():
        full, mask = full_logits, evidence_masks[modality]
        if masked.shape != full_logits.shape:  # the masked logits of the evidence rows only
            full, mask = full_logits[mask], torch.ones(masked.shape[0], dtype=torch.bool, device=mask.device)
        kl = kl_reference(full, masked.detach(), "reverse", temperature=temperature, vocab_size=vocab_size, dtype=dtype)
        kl_sum = kl_sum + _mean_over(kl, mask)
    loss = SIGNS[sign] * gamma * kl_sum
    if eta:
        any_evidence = torch.stack(list(evidence_masks.values())).any(dim=0)
        loss = loss + eta * _mean_over(entropy.to(dtype), any_evidence)
    return loss
