"""Micro-batches of each global step, decoded ahead by worker processes, resumable exactly.

The position is the sampler's ``consumed_samples`` counted at hand-out, not at prefetch, so a
checkpoint taken after step k resumes with step k + 1 however far the workers had read ahead.
"""
from __future__ import annotations

import logging
from typing import Iterator

import torch

from megatron_omni.data.batch import OmniBatch
from megatron_omni.data.dataset import Collator, OmniDataset
from megatron_omni.data.sampler import ResumableBatchSampler

log = logging.getLogger(__name__)


class _StepIndices:
    """Endless micro-batch index lists from ``start`` consumed samples on (a DataLoader batch sampler)."""

    def __init__(self, sampler: ResumableBatchSampler, start: int, micro_batch_size: int):
        self.sampler, self.start, self.micro_batch_size = sampler, start, micro_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        consumed = self.start
        while True:
            indices = self.sampler.indices_at(consumed)
            for offset in range(0, len(indices), self.micro_batch_size):
                yield indices[offset : offset + self.micro_batch_size]
            consumed += self.sampler.global_batch_size


def _single_thread_worker(_worker_id: int) -> None:
    # Workers decode in parallel already; intra-op threads in each would oversubscribe the cores.
    torch.set_num_threads(1)


class OmniLoader:
    def __init__(self, dataset: OmniDataset, sampler: ResumableBatchSampler, micro_batch_size: int,
                 collator: Collator, num_workers: int = 0, prefetch_factor: int = 2):
        share = sampler.global_batch_size // sampler.dp_size
        if share % micro_batch_size:
            raise ValueError(f"this rank's share of a global batch ({share}) is not a multiple of "
                             f"micro_batch_size ({micro_batch_size})")
        self.dataset, self.sampler, self.collator = dataset, sampler, collator
        self.micro_batch_size = micro_batch_size
        self.microbatches_per_step = share // micro_batch_size
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.num_skipped = 0
        self._batches: Iterator[OmniBatch] | None = None

    @classmethod
    def from_config(cls, dataset: OmniDataset, sampler: ResumableBatchSampler, micro_batch_size: int) -> "OmniLoader":
        """Layout (packing, length multiple) and worker count from the data set's ``DataConfig``."""
        cfg = dataset.processor.cfg
        collator = Collator(dataset.processor.token_ids.pad_token_id, cfg.packing, cfg.pad_to_multiple_of)
        return cls(dataset, sampler, micro_batch_size, collator, num_workers=cfg.num_workers)

    def _start(self) -> Iterator[OmniBatch]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_StepIndices(self.sampler, self.sampler.consumed_samples, self.micro_batch_size),
            collate_fn=self.collator,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            worker_init_fn=_single_thread_worker if self.num_workers else None,
        )
        return iter(loader)

    def next_step(self) -> list[OmniBatch]:
        """This rank's micro-batches for the next global step; advances the position by one step."""
        if self._batches is None:
            self._batches = self._start()
        batches = [next(self._batches) for _ in range(self.microbatches_per_step)]
        self.sampler.consumed_samples += self.sampler.global_batch_size
        for batch in batches:
            for skipped in batch.skipped:
                log.warning("skipped sample %s: %s", skipped.sample_id, skipped.reason)
            self.num_skipped += len(batch.skipped)
        return batches

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "skipped_samples": self.num_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.num_skipped = int(state.get("skipped_samples", 0))
        self._batches = None  # prefetched batches belong to the old position
