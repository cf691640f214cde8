"""Scatter encoder outputs into the placeholder positions of the text embeddings."""
from __future__ import annotations

import torch


class PlaceholderMismatch(ValueError):
    """The number of placeholder tokens does not match the number of encoder features."""


def placeholder_count(input_ids: torch.Tensor, token_id: int) -> int:
    return int((input_ids == token_id).sum())


def scatter_placeholders(
    embeddings: torch.Tensor, input_ids: torch.Tensor, token_id: int, features: torch.Tensor, what: str
) -> torch.Tensor:
    """Replace the embeddings at ``input_ids == token_id`` by ``features``, in reading order.

    ``embeddings`` is [s, b, h] (megatron's layout) and ``input_ids`` [b, s]. Features are consumed
    sample by sample, left to right -- the order in which the processor lays out clips and the
    order transformers' ``masked_scatter`` on [b, s, h] uses. Out of place, so gradients reach both
    the text embeddings and the encoder.
    """
    batch_idx, seq_idx = (input_ids == token_id).nonzero(as_tuple=True)
    if batch_idx.numel() != features.shape[0]:
        raise PlaceholderMismatch(
            f"input_ids hold {batch_idx.numel()} {what} placeholder tokens (id {token_id}) but the {what} "
            f"encoder produced {features.shape[0]} features; the grid / feature lengths and the "
            "placeholder counts must come from the same processor call"
        )
    return embeddings.index_put((seq_idx, batch_idx), features.to(embeddings.dtype))
