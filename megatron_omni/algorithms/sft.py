"""SFT cold start: cross-entropy on the `<think>description</think><answer>labels</answer>` target,
masked to the assistant turn (the processor's loss mask)."""
from __future__ import annotations

from functools import partial

from megatron_omni.algorithms.lm import masked_token_sum
from megatron_omni.data.batch import OmniBatch
from megatron_omni.training.loop import split_microbatches


def check_length(batch: OmniBatch, seq_length: int) -> OmniBatch:
    # Pipeline stages exchange activations of one fixed shape [seq_length, micro_batch, hidden].
    if batch.tokens.shape[1] != seq_length:
        raise ValueError(
            f"a micro-batch of samples {batch.sample_ids} is {batch.tokens.shape[1]} tokens long, "
            f"train.seq_length is {seq_length}: raise train.seq_length or shorten the samples"
        )
    return batch


class SFT:
    def __init__(self, dataset, collator, micro_batch_size: int, seq_length: int):
        self.dataset, self.collator = dataset, collator
        self.micro_batch_size, self.seq_length = micro_batch_size, seq_length

    def prepare(self, indices: list[int], step: int):
        batches = [
            check_length(self.collator([self.dataset[i] for i in chunk]), self.seq_length)
            for chunk in split_microbatches(indices, self.micro_batch_size)
        ]
        skipped = sum(len(b.skipped) for b in batches)
        return batches, {"skipped_samples": float(skipped)}

    def forward_step(self, batch: OmniBatch, model):
        output = model(batch.tokens, batch.position_ids, None, labels=batch.labels, **batch.model_kwargs())
        return output, partial(masked_token_sum, loss_mask=batch.loss_mask)
