"""Hugging Face thinker folder (Qwen2.5-Omni or Qwen3-Omni MoE) -> model-only Megatron checkpoint,
a tensor at a time.

Only the thinker is converted; a full folder's talker / token2wav / code2wav tensors and its other
files (spk_dict.pt) stay in the HF folder, from which ``convert_megatron_to_hf(..., base_model=...)`` takes them back.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from megatron_omni.config import ConfigError
from megatron_omni.convert.errors import ConversionError, check_keys_and_shapes
from megatron_omni.convert.hf_checkpoint import HFCheckpoint
from megatron_omni.convert.hf_config import DTYPE_NAMES, read_hf_config
from megatron_omni.convert.mapping import OmniParamMap
from megatron_omni.convert.megatron_checkpoint import check_output_dir, save_streamed_model_checkpoint
from megatron_omni.convert.model_config_file import OmniModelConfig
from megatron_omni.convert.world import single_process_world
from megatron_omni.models.decoder import padded_vocab_size
from megatron_omni.models.omni_config import validate_omni

Log = Callable[[str], None]


def _weights_dtype(checkpoint: HFCheckpoint, named: str | None, requested: str | None) -> str:
    """The requested dtype, else the one config.json names, else the tensors' own (if uniform)."""
    if requested or named:
        return requested or named
    stored = {DTYPE_NAMES.get(dtype) for dtype in checkpoint.dtypes()}
    return stored.pop() if len(stored) == 1 and None not in stored else "fp32"


def _tie_hint(cfg: OmniModelConfig, checkpoint: HFCheckpoint) -> str:
    has_head = "lm_head.weight" in checkpoint.tensors
    if cfg.model.tie_word_embeddings and has_head:
        return "\n  (config.json ties the embeddings -- tie_word_embeddings=true -- yet the checkpoint holds lm_head.weight)"
    if not cfg.model.tie_word_embeddings and not has_head:
        return "\n  (config.json does not tie the embeddings -- tie_word_embeddings=false -- so lm_head.weight is required)"
    return ""


def plan_conversion(hf_dir: str | Path, params_dtype: str | None = None,
                    log: Log = print) -> tuple[OmniModelConfig, HFCheckpoint, OmniParamMap]:
    """Read and check everything from config.json and the shard headers; loads no weights."""
    hf_dir = Path(hf_dir)
    cfg, named_dtype = read_hf_config(hf_dir)
    checkpoint = HFCheckpoint(hf_dir)
    if checkpoint.speech:
        log(f"[convert] {len(checkpoint.speech)} speech-generation tensors (talker.*, token2wav.*, code2wav.*) are not part of "
            f"the thinker and stay in {hf_dir}: tools/convert_megatron_to_hf.py --base-model {hf_dir} puts them "
            "(and the folder's other files) back beside the trained thinker")
    cfg.params_dtype = _weights_dtype(checkpoint, named_dtype, params_dtype)
    try:
        validate_omni(cfg.model, cfg.omni)
    except ConfigError as exc:
        raise ConversionError(f"{hf_dir / 'config.json'}: {exc}") from None
    param_map = OmniParamMap(cfg, padded_vocab_size(cfg.model, 1))
    check_keys_and_shapes(str(hf_dir), checkpoint.shapes(), param_map.hf_shapes(), _tie_hint(cfg, checkpoint))
    return cfg, checkpoint, param_map


def thinker_tensors(checkpoint: HFCheckpoint, param_map: OmniParamMap) -> Callable[[str], torch.Tensor]:
    """megatron state-dict name -> its tensor, read from the HF shards (fused tensors from their parts)."""
    by_name = {mapping.megatron: mapping for mapping in param_map.mappings}

    def tensor(name: str) -> torch.Tensor:
        mapping = by_name[name]
        return param_map.to_megatron(mapping, [checkpoint.read(checkpoint.tensors[key]) for key in mapping.hf])

    return tensor


def convert_hf_to_megatron(
    hf_dir: str | Path, out_dir: str | Path, params_dtype: str | None = None, overwrite: bool = False, log: Log = print
) -> Path:
    """Convert a HF thinker folder (or a full Qwen2.5-Omni / Qwen3-Omni folder) into ``out_dir``.

    ``params_dtype`` ("fp32", "bf16", "fp16") defaults to the dtype config.json names. Nothing is
    written unless every check passes; ``out_dir`` appears only once complete. Each tensor is read,
    converted and written on its own: memory stays at a layer, whatever the model's size.
    """
    hf_dir = Path(hf_dir)
    out_dir = check_output_dir(out_dir, overwrite)
    cfg, checkpoint, param_map = plan_conversion(hf_dir, params_dtype, log)
    with single_process_world():
        log(f"[convert] writing {out_dir} ({cfg.model.num_layers} decoder layers, {cfg.params_dtype}) "
            f"from {len(checkpoint.files)} safetensors file(s)")
        save_streamed_model_checkpoint(out_dir, cfg, thinker_tensors(checkpoint, param_map), param_map.megatron_names(),
                                       assets_from=hf_dir, overwrite=overwrite)
    return out_dir
