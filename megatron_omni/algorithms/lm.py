"""Next-token cross-entropy: the language-decoder objective (also the core of SFT)."""
from __future__ import annotations

from functools import partial

import torch

from megatron_omni.models.decoder import text_position_ids


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def masked_token_mean(per_token_loss: torch.Tensor, loss_mask: torch.Tensor):
    """Mean over unmasked tokens; megatron's schedule divides by the number of micro-batches."""
    loss_mask = loss_mask.float()
    loss = (per_token_loss.float() * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    # clone: megatron's schedule divides the returned loss in place by the micro-batch count.
    return loss, {"lm_loss": loss.detach().clone()}


def lm_forward_step(batch: dict[str, torch.Tensor], model, mrope: bool):
    """Forward one micro-batch; megatron's GPTModel returns the per-token vocab-parallel CE."""
    tokens = batch["tokens"]
    output = model(tokens, text_position_ids(tokens, mrope), None, labels=batch["labels"])
    return output, partial(masked_token_mean, loss_mask=batch["loss_mask"])
