"""Configuration machinery: typed dataclass loading from YAML with dotted overrides, one error
type, and the walk that lets every section validate itself.

Sections live beside their owners (``models/config.py``, ``parallel/config.py``,
``training/config.py``, ``data/config.py``, ``generation/config.py``, ``rewards/config.py``,
``algorithms/config.py``, ``eval/config.py``); the run configurations that gather them are
``training.config.RunConfig`` (decoder runs) and ``runs.config.OmniTrainConfig`` (omni runs).
This package imports no other subpackage of the project.
"""
from megatron_omni.config.errors import ConfigError
from megatron_omni.config.loading import load_config, parse_override
from megatron_omni.config.validation import validate_sections

__all__ = ["ConfigError", "load_config", "parse_override", "validate_sections"]
