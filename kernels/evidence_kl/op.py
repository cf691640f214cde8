"""OPPO's Omni-Perception loss term: how much the policy's next-token distribution on
modality-specific evidence tokens depends on that modality.

For each modality m (e.g. "visual", "audio") the policy is run once more under no_grad with m's
input features masked; on the completion tokens classified as m-evidence,
    kl_m,t = KL(pi(. | full) || pi(. | m masked))    (full vocabulary, per token)
and
    L_op = s * gamma * sum_m mean_{t in evidence_m} kl_m,t  +  eta * mean_{t in any evidence} H_t
with s = -1 ("reward_divergence", the reference default: a statement about what was seen should
depend on the video) or s = +1 ("penalize_divergence", the "KL penalty" reading). A modality
without evidence tokens contributes 0. H_t is a per-token entropy the caller supplies (e.g. the
policy entropy from `vocab_parallel_logprob_entropy`); the reference leaves that term's exact
form open, and eta = 0 drops it. Gradients reach the full-input logits only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_omni.kernels.common.backend import Backend
from megatron_omni.kernels.common.validation import fail
from megatron_omni.kernels.kl.op import vocab_parallel_kl

SIGNS = {"reward_divergence": -1.0, "penalize_divergence": 1.0}


@dataclass(frozen=True)
class EvidenceKL:
    loss: Tensor  # scalar, differentiable w.r.t. the full-input logits
    kl_per_token: dict[str, Tensor]  # modality -> fp32 [...] KL, 0 off its evidence tokens
    kl_mean: dict[str, Tensor]  # modality -> detached mean KL over its evidence tokens
    # modality -> number of evidence tokens, a 0-d tensor on the logits' device (reading it syncs)
    n_evidence: dict[str, Tensor]


def evidence_masked_kl(
    full_logits: Tensor,
    masked_logits: Mapping[str, Tensor],
    evidence_masks: Mapping[str, Tensor],
    *,
    gamma: float = 5e-4,
    sign: Literal["reward_divergence", "penalize_divergence"] = "reward_divergence",
    entropy: Tensor | None = None,
    eta: float = 0.0,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    group: dist.ProcessGroup | None = None,
    backend: Backend = "auto",
) -> EvidenceKL:
    """The Omni-Perception loss term (module doc), built on `vocab_parallel_kl` in reverse mode
    with the full-input policy as the student and each masked-modality policy as the teacher.

    Args:
        full_logits: [..., V_local] logits of the full-input forward (requires grad).
        masked_logits: modality -> logits of the forward with that modality masked (no grad;
            they are detached here): shaped like `full_logits`, or only that modality's
            evidence rows, [n_m, V_local] in the row-major order of `evidence_masks[m]` (what a
            caller keeps between the masked forward and the loss: n_m may be 0).
        evidence_masks: modality -> bool [...] marking that modality's evidence tokens; same keys.
        gamma, sign: weight and sign of the KL term.
        entropy, eta: optional per-token entropy [...] and its weight.
        temperature, vocab_size, group, backend: as in `vocab_parallel_kl`.
    """
    if sign not in SIGNS:
        fail("sign", f"must be one of {tuple(SIGNS)}, got {sign!r}")
    if set(masked_logits) != set(evidence_masks):
        fail("evidence_masks", f"modalities {sorted(evidence_masks)} differ from masked_logits {sorted(masked_logits)}")
    if not masked_logits:
        fail("masked_logits", "needs at least one modality")
    kl_per_token, kl_mean, n_evidence = {}, {}, {}
    kl_sum = full_logits.new_zeros((), dtype=torch.float32)
    for modality, masked in masked_logits.items():
        mask = evidence_masks[modality]
        if _evidence_rows_only(masked, full_logits, modality):
            kl = _kl_on_evidence_rows(full_logits, masked, mask, modality, temperature=temperature,
                                      vocab_size=vocab_size, group=group, backend=backend)
        else:
            kl = vocab_parallel_kl(
                full_logits, masked.detach(), mode="reverse", temperature=temperature, vocab_size=vocab_size,
                row_mask=mask, group=group, backend=backend,
            )
        # No host read of the count: the masked rows' KL is zero, so a sample without evidence
        # gives 0 / 1 = 0 without a branch that would synchronise the GPU.
        n = mask.sum()
        mean = kl.sum() / n.clamp(min=1)
        kl_per_token[modality], kl_mean[modality], n_evidence[modality] = kl, mean.detach(), n
        kl_sum = kl_sum + mean
    loss = SIGNS[sign] * gamma * kl_sum
    if eta:
        loss = loss + eta * _mean_entropy_on_evidence(entropy, evidence_masks)
    return EvidenceKL(loss=loss, kl_per_token=kl_per_token, kl_mean=kl_mean, n_evidence=n_evidence)


def _evidence_rows_only(masked, full_logits: Tensor, modality: str) -> bool:
    """Whether ``masked`` holds evidence rows only ([n, V_local]) rather than all of full_logits'
    rows. With [T, V_local] full logits, n == T reads as all rows: were they evidence rows, the
    mask would mark every row and both readings agree."""
    if isinstance(masked, Tensor) and masked.shape == full_logits.shape:
        return False
    if isinstance(masked, Tensor) and masked.dim() == 2 and masked.shape[1] == full_logits.shape[-1]:
        return True
    fail(f"masked_logits[{modality!r}]", f"must be a tensor shaped like full_logits {tuple(full_logits.shape)} or "
         f"its evidence rows [n, {full_logits.shape[-1]}], got "
         f"{tuple(getattr(masked, 'shape', ())) or type(masked).__name__}")


def _kl_on_evidence_rows(full_logits: Tensor, masked_rows: Tensor, mask: Tensor, modality: str, **kl_options) -> Tensor:
    """Per-token KL shaped like ``mask`` from the masked logits of its True rows only: the
    full-input rows there are gathered (their gradient scatters back), the rest stay 0."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != full_logits.shape[:-1]:
        fail(f"evidence_masks[{modality!r}]", f"must be a bool tensor shaped {tuple(full_logits.shape[:-1])}, got "
             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    full_rows = full_logits[mask]
    if full_rows.shape[0] != masked_rows.shape[0]:
        fail(f"masked_logits[{modality!r}]", f"holds {masked_rows.shape[0]} evidence rows, "
             f"evidence_masks[{modality!r}] marks {full_rows.shape[0]}")
    kl_rows = vocab_parallel_kl(full_rows, masked_rows.detach(), mode="reverse", **kl_options)
    # Scattered back so the token sum runs over the same [...] tensor as with full-shape logits.
    return kl_rows.new_zeros(mask.shape).masked_scatter(mask, kl_rows)


def _mean_entropy_on_evidence(entropy: Tensor | None, evidence_masks: Mapping[str, Tensor]) -> Tensor:
    any_evidence = torch.stack([m for m in evidence_masks.values()]).any(dim=0)
    if entropy is None:
        fail("entropy", "is required when eta != 0")
    if entropy.shape != any_evidence.shape:
        fail("entropy", f"shape {tuple(entropy.shape)} must equal the evidence masks' {tuple(any_evidence.shape)}")
    return (entropy * any_evidence).sum() / any_evidence.sum().clamp(min=1)
