"""SFT cold start: cross-entropy on the `<think>description</think><answer>labels</answer>` target,
masked to the assistant turn (the processor's loss mask)."""
from __future__ import annotations

from functools import partial

from megatron_omni.algorithms.lm import masked_token_sum
from megatron_omni.algorithms.step_common import check_length, split_microbatches, step_samples
from megatron_omni.data.batch import OmniBatch
from megatron_omni.data.skips import SampleRules
from megatron_omni.parallel.device import step_device


class SFT:
    def __init__(self, dataset, collator, micro_batch_size: int, seq_length: int):
        # The SFT target (description and openset) is checked by the processor.
        self.sample_source = step_samples(dataset, SampleRules(max_tokens=seq_length, budget=f"train.seq_length ({seq_length})"))
        self.collator = collator
        self.micro_batch_size, self.seq_length = micro_batch_size, seq_length

    def state_dict(self) -> dict:
        return {"samples": self.sample_source.state_dict()}  # the skip counts, checkpointed

    def load_state_dict(self, state: dict) -> None:
        self.sample_source.load_state_dict(state["samples"])

    def prepare(self, indices: list[int], step: int):
        _, samples, metrics = self.sample_source.load_step(indices)
        device = step_device()
        batches = [check_length(self.collator(chunk), self.seq_length).to(device)
                   for chunk in split_microbatches(samples, self.micro_batch_size)]
        return batches, metrics

    def forward_step(self, batch: OmniBatch, model):
        output = model(batch.tokens, batch.position_ids, None, labels=batch.labels, **batch.model_kwargs())
        return output, partial(masked_token_sum, loss_mask=batch.loss_mask)
