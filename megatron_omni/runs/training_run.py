"""What every training run hands the loop: its config, model chunks, optimizer and LR
scheduler, the resumable sampler and the algorithm."""
from __future__ import annotations

from dataclasses import dataclass

from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.training.config import RunConfig
from megatron_omni.training.loop import train


@dataclass
class TrainingRun:
    cfg: RunConfig
    model_chunks: list
    optimizer: object
    scheduler: object
    sampler: ResumableBatchSampler
    algorithm: object

    def train(self) -> list[dict]:
        """Train to cfg.train.steps (resuming from the newest checkpoint); this run's metrics per step."""
        return train(self.cfg, self.model_chunks, self.optimizer, self.scheduler, self.sampler, self.algorithm)
