"""What every training run hands the loop: its config, model chunks, optimizer and LR
scheduler, the resumable sampler and the algorithm."""
from __future__ import annotations

from dataclasses import dataclass

from megatron.core import parallel_state

from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.parallel import initialize_parallel, set_seed
from megatron_omni.training.config import RunConfig
from megatron_omni.training.loop import train


def start_layout(cfg: RunConfig) -> None:
    """megatron's parallel groups for the configured layout, then the run's seeds."""
    p = cfg.parallel
    initialize_parallel(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size,
                        p.expert_model_parallel_size)
    set_seed(cfg.train.seed)


def data_parallel_sampler(num_samples: int, cfg: RunConfig) -> ResumableBatchSampler:
    """This data-parallel rank's share of every global batch, resumable."""
    return ResumableBatchSampler(
        num_samples, cfg.train.global_batch_size,
        dp_rank=parallel_state.get_data_parallel_rank(), dp_size=parallel_state.get_data_parallel_world_size(),
        seed=cfg.train.seed,
    )


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
