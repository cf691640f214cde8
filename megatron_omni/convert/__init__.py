"""Checkpoint conversion between Hugging Face thinkers (Qwen2.5-Omni, Qwen3-Omni MoE) and Megatron checkpoints."""
from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.hf_to_megatron import convert_hf_to_megatron
from megatron_omni.convert.megatron_checkpoint import load_model_checkpoint, save_model_checkpoint
from megatron_omni.convert.megatron_to_hf import convert_megatron_to_hf
from megatron_omni.convert.model_config_file import OmniModelConfig, read_model_config, write_model_config

__all__ = [
    "ConversionError",
    "OmniModelConfig",
    "convert_hf_to_megatron",
    "convert_megatron_to_hf",
    "load_model_checkpoint",
    "read_model_config",
    "save_model_checkpoint",
    "write_model_config",
]
