"""The ``reward`` section of a run config: the Omni-Perception Reward's weights, margins and
models, passed whole to `OmniPerceptionReward`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_omni.config import ConfigError


@dataclass
class RewardConfig:
    # MER emotion-wheel lexicon folder (format.csv, synonym.xlsx, wheel1-5.xlsx); null with the toy
    # data set: the toy set's own small wheel.
    wheel_dir: str | None = None
    weight_ew: float = 1.0
    weight_format: float = 0.1
    weight_perc: float = 0.3
    weight_coh: float = 0.3
    tau: float = 0.5  # cue-score margin
    evidence_threshold: float = 0.5  # cosine a sentence needs to count as visual/audio evidence
    wheel_level: Literal["level1", "level2"] = "level1"  # R_ew's emotion-wheel level
    embedding_model: str | None = None  # local sentence-transformers folder; null: all-MiniLM-L6-v2
    # Of the sentence-embedding model and the reward tensors; null: the rank's training device
    # (its GPU under NCCL, else the CPU).
    device: str | None = None

    def validate(self, key: str) -> None:
        for name in ("weight_ew", "weight_format", "weight_perc", "weight_coh"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.tau < 1.0:
            raise ConfigError(f"{key}.tau must lie in [0, 1), got {self.tau}")
        if not -1.0 <= self.evidence_threshold <= 1.0:
            raise ConfigError(f"{key}.evidence_threshold is a cosine similarity and must lie in [-1, 1], "
                              f"got {self.evidence_threshold}")
