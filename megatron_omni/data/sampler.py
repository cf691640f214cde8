"""A resumable, data-parallel batch sampler: its whole position is one number, consumed samples.

Each epoch is a permutation drawn from ``seed + epoch``; a global batch is cut into contiguous
per-data-parallel-rank slices. Saving ``consumed_samples`` in a checkpoint and restoring it gives
a resumed run exactly the batches it would have seen.
"""
from __future__ import annotations

import torch


class ResumableBatchSampler:
    def __init__(self, num_samples: int, global_batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if global_batch_size % dp_size:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by data-parallel size {dp_size}")
        if num_samples < global_batch_size:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {global_batch_size}")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.consumed_samples = 0
        self._cached_order: tuple[int, torch.Tensor] | None = None

    @property
    def batches_per_epoch(self) -> int:
        # The tail that cannot fill a global batch is dropped, so every epoch has equal steps.
        return self.num_samples // self.global_batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        # One permutation per epoch, kept: large data sets would otherwise redraw it every step.
        if self._cached_order is None or self._cached_order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._cached_order = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._cached_order[1]

    def indices_at(self, consumed_samples: int) -> list[int]:
        """This rank's sample indices of the global batch that starts at ``consumed_samples``."""
        per_epoch = self.batches_per_epoch * self.global_batch_size
        epoch, offset = divmod(consumed_samples, per_epoch)
        batch = self._order(epoch)[offset : offset + self.global_batch_size]
        share = self.global_batch_size // self.dp_size
        return batch[self.dp_rank * share : (self.dp_rank + 1) * share].tolist()

    def next_indices(self) -> list[int]:
        """This rank's sample indices of the next global batch; advances the position."""
        indices = self.indices_at(self.consumed_samples)
        self.consumed_samples += self.global_batch_size
        return indices

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for {state['num_samples']} samples / seed {state['seed']}, "
                f"this run has {self.num_samples} / {self.seed}: the data set or seed changed"
            )
        self.consumed_samples = state["consumed_samples"]
