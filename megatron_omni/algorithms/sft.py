"""SFT cold start: cross-entropy on the `<think>description</think><answer>labels</answer>` target,
masked to the assistant turn (the processor's loss mask)."""
from __future__ import annotations

from functools import partial

from megatron_omni.algorithms.lm import masked_token_sum
from megatron_omni.algorithms.step_common import check_length, split_microbatches
from megatron_omni.data.batch import OmniBatch


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
