"""SFT cold start: cross-entropy on the `<think>description</think><answer>labels</answer>` target,
masked to the assistant turn (the processor's loss mask). With ``data.packing`` (a packing
collator) each micro-batch is one row of train.seq_length holding the samples that fit in it."""
from __future__ import annotations

from functools import partial

from megatron_omni.algorithms.lm import masked_token_sum
from megatron_omni.algorithms.step_common import check_length, microbatch_chunks, step_samples
from megatron_omni.data.batch import OmniBatch
from megatron_omni.data.skips import SampleRules
from megatron_omni.parallel.device import step_device


class SFT:
    def __init__(self, dataset, collator, micro_batch_size: int, seq_length: int):
        # The SFT target (description and openset) is checked by the processor.
        self.sample_source = step_samples(dataset, SampleRules(max_tokens=seq_length, budget=f"train.seq_length ({seq_length})"))
        self.collator = collator
        self.micro_batch_size, self.seq_length = micro_batch_size, seq_length
        # The pipeline's activation shape (training/loop.py): a packed micro-batch is one row.
        self.microbatch_rows = 1 if collator.packing else micro_batch_size

    def state_dict(self) -> dict:
        return {"samples": self.sample_source.state_dict()}  # the skip counts, checkpointed

    def load_state_dict(self, state: dict) -> None:
        self.sample_source.load_state_dict(state["samples"])

    def prepare(self, indices: list[int], step: int):
        _, samples, metrics = self.sample_source.load_step(indices)
        device = step_device()
        chunks = microbatch_chunks([s.length for s in samples], self.micro_batch_size, self.seq_length,
                                   self.collator.packing)
        batches = [check_length(self.collator([samples[i] for i in chunk]), self.seq_length).to(device)
                   for chunk in chunks]
        return batches, metrics

    def forward_step(self, batch: OmniBatch, model):
        output = model(batch.tokens, batch.position_ids, None, labels=batch.labels, **batch.model_kwargs())
        return output, partial(masked_token_sum, loss_mask=batch.loss_mask)
