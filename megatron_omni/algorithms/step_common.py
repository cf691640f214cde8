"""What every algorithm's step shares: its samples (skips, replacements), micro-batch splitting,
the pipeline's fixed sequence length, padded or packed micro-batches, the (token sum, token count, metrics)
return megatron's schedule expects from a loss function, and frozen models kept on the CPU
between their forwards."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from megatron_omni.data.batch import OmniBatch, pack, pack_rows, pad
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
    # No row is longer than train.seq_length. Where one length is needed (pipeline stages exchange
    # activations of one shape) rows are padded to a multiple of train.seq_length, so a sample
    # over it shows here as a longer row.
    if batch.tokens.shape[1] > seq_length:
        raise ValueError(
            f"a micro-batch of samples {batch.sample_ids} is {batch.tokens.shape[1]} tokens long, "
            f"train.seq_length is {seq_length}: raise train.seq_length or shorten the samples"
        )
    return batch


def microbatch_chunks(lengths: list[int], per_micro: int, seq_length: int, packing: bool) -> list[list[int]]:
    """Entry indices of each micro-batch: ``per_micro`` consecutive entries padded, or the entries
    packed into one row of ``seq_length`` tokens (``data.packing``)."""
    if packing:
        return pack_rows(lengths, seq_length)
    return split_microbatches(list(range(len(lengths))), per_micro)


def step_microbatches(sequences: list[ProcessedSample], per_micro: int, seq_length: int,
                      packing: bool) -> list[tuple[list[int], OmniBatch]]:
    """(entry indices, batch) per micro-batch in the pipeline's fixed shape: [per_micro,
    seq_length] padded, or [1, seq_length] packed rows, each ending in a padding segment."""
    layout = pack if packing else pad
    chunks = microbatch_chunks([s.length for s in sequences], per_micro, seq_length, packing)
    return [(chunk, check_length(layout([sequences[i] for i in chunk], seq_length), seq_length)) for chunk in chunks]


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
