"""Fused, vocab-parallel loss kernels with their pure-torch references.

- `vocab_parallel_kl`: per-token forward / reverse KL or generalised JSD between student and
  teacher logits, TP-sharded vocabulary, temperature, row selection, padded-vocab exclusion.
- `evidence_masked_kl`: OPPO's Omni-Perception loss term built on it.
- `vocab_parallel_logprob_entropy`: per-token log-prob of the sampled token and entropy (GRPO).
- `topk_tail_kl`: the same divergences over the teacher's top-k tokens plus one tail bucket
  (pure torch, chunked, TP-sharded vocabulary).
- `kl_reference`, `logprob_entropy_reference`, `topk_tail_kl_reference`: the materialising torch
  definitions.

The other ops run Triton kernels where Triton can run (CUDA, or TRITON_INTERPRET=1 on CPU) and a
chunked pure-torch path elsewhere; `backend=` forces one. See docs/KERNELS.md.
"""
from megatron_omni.kernels.evidence_kl import EvidenceKL, evidence_masked_kl
from megatron_omni.kernels.logprob_entropy import vocab_parallel_logprob_entropy
from megatron_omni.kernels.reference import kl_reference, logprob_entropy_reference, topk_tail_kl_reference
from megatron_omni.kernels.topk_kl import topk_tail_kl
from megatron_omni.kernels.vocab_parallel_kl import vocab_parallel_kl

__all__ = [
    "EvidenceKL",
    "evidence_masked_kl",
    "kl_reference",
    "logprob_entropy_reference",
    "topk_tail_kl",
    "topk_tail_kl_reference",
    "vocab_parallel_kl",
    "vocab_parallel_logprob_entropy",
]
