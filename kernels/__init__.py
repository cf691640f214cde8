"""Fused, vocab-parallel loss kernels with their pure-torch references, one folder per op:

- `kl/`: `vocab_parallel_kl`, per-token forward / reverse KL or generalised JSD between student
  and teacher logits, TP-sharded vocabulary, temperature, row selection, padded-vocab exclusion.
- `logprob_entropy/`: `vocab_parallel_logprob_entropy`, per-token log-prob of the sampled token
  and entropy (GRPO).
- `topk_kl/`: `topk_tail_kl`, the same divergences over the teacher's top-k tokens plus one tail
  bucket (pure torch, chunked, TP-sharded vocabulary).
- `evidence_kl/`: `evidence_masked_kl` (returns `EvidenceKL`), OPPO's Omni-Perception loss term
  built on `vocab_parallel_kl`.
- `common/`: backend choice, argument checks, vocabulary shards and row selection, online softmax,
  Triton building blocks, row chunking, the references' dense math, the GPU compile check.

Every op folder uses the same file names: `op.py` (the public function), `stats.py` (per-token
statistics and their exact merge across shards), `triton_impl.py` and `chunked.py` (the Triton
and the chunked pure-torch primitives), `reference.py` (the materialising torch definition:
`kl_reference`, `logprob_entropy_reference`, `topk_tail_kl_reference`, the tests' float64 oracle
and the benchmarks' eager baseline).

`vocab_parallel_kl` and `vocab_parallel_logprob_entropy` run Triton kernels where Triton can run
(CUDA, or TRITON_INTERPRET=1 on CPU) and the chunked pure-torch path elsewhere; `backend=` forces
one. See docs/KERNELS.md.
"""
from megatron_omni.kernels.evidence_kl.op import EvidenceKL, evidence_masked_kl
from megatron_omni.kernels.kl.op import vocab_parallel_kl
from megatron_omni.kernels.kl.reference import kl_reference
from megatron_omni.kernels.logprob_entropy.op import vocab_parallel_logprob_entropy
from megatron_omni.kernels.logprob_entropy.reference import logprob_entropy_reference
from megatron_omni.kernels.topk_kl.op import topk_tail_kl
from megatron_omni.kernels.topk_kl.reference import topk_tail_kl_reference

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
