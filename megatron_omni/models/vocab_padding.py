"""Keep the rows megatron adds to the vocabulary (for an even split over TP ranks) out of softmaxes.

A padded row of the output layer produces a logit of 0, not -inf, so without masking every
softmax, log-prob, cross-entropy and KL over the padded vocabulary would differ from the model's
true distribution. Masked columns carry the dtype's lowest finite value: their probability is
exactly 0 and ``p * log p`` stays 0 (``-inf`` would give NaN there). The mask is applied to the
output layer's result in place, before GPTModel computes its loss or transposes the logits, so it
costs no extra copy of the logits.
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state


def local_padding_start(vocab_size: int, local_columns: int, tp_rank: int) -> int | None:
    """First padded column of this rank's vocabulary shard, or None if the shard has no padding."""
    first = tp_rank * local_columns
    if first + local_columns <= vocab_size:
        return None
    return max(vocab_size - first, 0)


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int, gathered: bool = False) -> torch.Tensor:
    """Set the padded vocabulary columns of ``logits`` in place: [..., V_padded / TP] holds this
    TP rank's shard, or [..., V_padded] when ``gathered`` over TP ranks."""
    tp_rank = 0 if gathered else parallel_state.get_tensor_model_parallel_rank()
    start = local_padding_start(vocab_size, logits.shape[-1], tp_rank)
    if start is not None:
        logits[..., start:] = torch.finfo(logits.dtype).min
    return logits


def padded_vocab_hook(vocab_size: int):
    """A forward hook for GPTModel's output layer, a ColumnParallelLinear returning
    ``(logits [s, b, V/TP or V], bias)``; the full width means it gathered the shards."""

    def hook(module, inputs, output):
        logits = output[0]
        mask_padded_vocab(logits, vocab_size, gathered=logits.shape[-1] != module.output_size_per_partition)
        return output

    return hook
