"""Pure-torch reference of `vocab_parallel_logprob_entropy`: log_softmax over the whole
[tokens x vocab] tensor, differentiated by autograd (the tests' oracle, the benchmarks' eager
baseline)."""
from __future__ import annotations

import torch
from torch import Tensor

from megatron_omni.kernels.common.dense_math import entropy_rows, log_probs


def logprob_entropy_reference(
    logits: Tensor,
    target_ids: Tensor,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Per-token log-prob of `target_ids` and entropy of softmax(logits / T)."""
    log_p = log_probs(logits, temperature, vocab_size, dtype)
    logprob = log_p.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
    return logprob, entropy_rows(log_p)
