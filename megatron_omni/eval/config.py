"""The ``evaluation`` section of a run config: the held-out scoring hook of training runs."""
from __future__ import annotations

from dataclasses import dataclass

from megatron_omni.config import ConfigError


@dataclass
class EvaluationConfig:
    """Greedy answers on the held-out manifest, scored with the MER-style metrics."""

    at_start: bool = False  # before the first step (e.g. the SFT model an RL run starts from)
    at_end: bool = False
    max_new_tokens: int = 128
    max_samples: int | None = None

    def validate(self, key: str) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"{key}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"{key}.max_samples must be >= 1 or null, got {self.max_samples}")
