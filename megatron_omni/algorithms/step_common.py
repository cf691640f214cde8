"""What every algorithm's step shares: its samples (skips, replacements), micro-batch splitting,
the pipeline's fixed sequence length, padded micro-batches, the (token sum, token count, metrics)
return megatron's schedule expects from a loss function, and frozen models kept on the CPU
between their forwards."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from megatron_omni.data.batch import OmniBatch, pad
from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.processor import ProcessedSample
from megatron_omni.data.skips import SampleRules, SampleSource
from megatron_omni.parallel.device import step_device


def step_samples(dataset: OmniDataset, rules: SampleRules) -> SampleSource:
    """A training algorithm's samples: the data-parallel ranks stop together on too many skips,
    and the first tensor/pipeline rank of each data-parallel slice prints its skip lines."""
    from megatron.core import parallel_state

    announce = parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.is_pipeline_first_stage()
    return SampleSource(dataset, rules, group=parallel_state.get_data_parallel_group(), announce=announce)


def split_microbatches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def check_length(batch: OmniBatch, seq_length: int) -> OmniBatch:
    # Pipeline stages exchange activations of one fixed shape [seq_length, micro_batch, hidden].
    if batch.tokens.shape[1] != seq_length:
        raise ValueError(
            f"a micro-batch of samples {batch.sample_ids} is {batch.tokens.shape[1]} tokens long, "
            f"train.seq_length is {seq_length}: raise train.seq_length or shorten the samples"
        )
    return batch


def padded_microbatches(sequences: list[ProcessedSample], per_micro: int, seq_length: int) -> list[tuple[list[int], OmniBatch]]:
    """(entry indices, [per_micro, seq_length] batch) per micro-batch: the pipeline's fixed shape."""
    return [(chunk, check_length(pad([sequences[i] for i in chunk], seq_length), seq_length))
            for chunk in split_microbatches(list(range(len(sequences))), per_micro)]


def token_sum_loss(total: torch.Tensor, count: torch.Tensor, name: str, metrics: dict | None = None):
    """The loss function's return: megatron divides ``total`` by the global batch's token count
    (``calculate_per_token_loss``) and averages each metric's [sum, count] pair the same way."""
    # megatron accumulates the token count in an int tensor.
    return total, count.int(), {name: torch.stack([total.detach(), count.float()]), **(metrics or {})}


def move_chunks(chunks: list, device: torch.device) -> None:
    """Parameters and buffers of model chunks to ``device``, in place (the same Parameter objects)."""
    for chunk in chunks:
        chunk.to(device)


@contextmanager
def on_step_device(chunks: list, offloaded: bool):
    """``chunks`` for a scoring forward: a frozen model kept on the CPU between its forwards
    (``offloaded``) comes to the step device for the block and goes back to the CPU after it, so
    its weights take no device memory while the policy trains; otherwise nothing moves."""
    if not offloaded:
        yield chunks
        return
    move_chunks(chunks, step_device())
    try:
        yield chunks
    finally:
        move_chunks(chunks, torch.device("cpu"))
