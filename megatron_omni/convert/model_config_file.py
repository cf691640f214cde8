"""The model description stored beside a Megatron checkpoint, so loading it needs no guessing.

``omni_model.yaml`` holds the decoder (``model:``), the towers and token ids (``omni:``) with the
same section names as the run configuration, plus the dtype the weights are stored in.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from megatron_omni.config import load_config
from megatron_omni.models.config import ModelConfig, PrecisionConfig
from megatron_omni.models.omni_config import OmniConfig
from megatron_omni.parallel.config import ParallelConfig
from megatron_omni.training.config import RunConfig

MODEL_CONFIG_FILE = "omni_model.yaml"


@dataclass
class OmniModelConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    omni: OmniConfig = field(default_factory=OmniConfig)
    params_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"

    def to_config(self, tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                  sequence_parallel: bool = False, expert_model_parallel_size: int = 1) -> RunConfig:
        """A run configuration that builds this model at the given layout.

        The local (plain torch) layer spec is used: checkpoints store Transformer Engine key
        names either way, so a model built with the TE spec loads them too.
        """
        return RunConfig(
            model=copy.deepcopy(self.model),
            parallel=ParallelConfig(
                tensor_model_parallel_size=tensor_model_parallel_size,
                pipeline_model_parallel_size=pipeline_model_parallel_size,
                sequence_parallel=sequence_parallel,
                expert_model_parallel_size=expert_model_parallel_size,
            ),
            precision=PrecisionConfig(params_dtype=self.params_dtype, transformer_engine=False),
        )


def write_model_config(folder: str | Path, cfg: OmniModelConfig) -> Path:
    path = Path(folder) / MODEL_CONFIG_FILE
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return path


def model_config_path(checkpoint: str | Path) -> Path:
    """``omni_model.yaml`` of a checkpoint folder, also when given one of its ``iter_*`` folders."""
    checkpoint = Path(checkpoint)
    for folder in (checkpoint, checkpoint.parent):
        if (folder / MODEL_CONFIG_FILE).is_file():
            return folder / MODEL_CONFIG_FILE
    raise FileNotFoundError(
        f"{checkpoint}: no {MODEL_CONFIG_FILE} beside the checkpoint (was it written by save_model_checkpoint?)")


def read_model_config(checkpoint: str | Path) -> OmniModelConfig:
    """Read and type-check the model description; errors name the file and the key."""
    return load_config(model_config_path(checkpoint), cls=OmniModelConfig)
