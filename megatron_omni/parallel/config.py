"""The ``parallel`` section of a run config: megatron-core's tensor, pipeline and data layout."""
from __future__ import annotations

from dataclasses import dataclass

from megatron_omni.config import ConfigError


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    # Experts of a MoE decoder split over this many ranks (megatron's expert-parallel group, taken
    # inside each pipeline stage's data-parallel x tensor-parallel ranks); the experts keep the TP
    # layout of the dense layers (megatron's expert tensor parallelism = TP).
    expert_model_parallel_size: int = 1

    def validate(self, key: str) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        if self.virtual_pipeline_model_parallel_size is not None and self.pipeline_model_parallel_size < 2:
            raise ConfigError(f"{key}.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size >= 2")
        if self.sequence_parallel and self.tensor_model_parallel_size < 2:
            raise ConfigError(f"{key}.sequence_parallel needs tensor_model_parallel_size >= 2")
