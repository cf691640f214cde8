"""Next-token cross-entropy: the language-decoder objective (also the core of SFT)."""
from __future__ import annotations

from functools import partial

import torch

from megatron_omni.algorithms.step_common import split_microbatches, token_sum_loss
from megatron_omni.models.decoder import text_position_ids


class LanguageModeling:
    """Next-token prediction on fixed-length windows of a token data set (the loop's Algorithm)."""

    def __init__(self, dataset, micro_batch_size: int, mrope: bool):
        self.dataset, self.micro_batch_size, self.mrope = dataset, micro_batch_size, mrope

    def prepare(self, indices: list[int], step: int):
        chunks = split_microbatches(indices, self.micro_batch_size)
        return [collate([self.dataset[i] for i in chunk]) for chunk in chunks], {}

    def forward_step(self, batch, model):
        return lm_forward_step(batch, model, self.mrope)


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def masked_token_sum(per_token_loss: torch.Tensor, loss_mask: torch.Tensor):
    """(token sum, token count, metrics): megatron divides by the global batch's token count."""
    loss_mask = loss_mask.float()
    total = (per_token_loss.float() * loss_mask).sum()
    return token_sum_loss(total, loss_mask.sum(), "lm_loss")


def lm_forward_step(batch: dict[str, torch.Tensor], model, mrope: bool):
    """Forward one micro-batch; megatron's GPTModel returns the per-token vocab-parallel CE."""
    tokens = batch["tokens"]
    output = model(tokens, text_position_ids(tokens, mrope), None, labels=batch["labels"])
    return output, partial(masked_token_sum, loss_mask=batch["loss_mask"])
