"""Hugging Face Qwen2.5-Omni thinker config.json <-> OmniModelConfig.

Accepted inputs: a thinker folder (``model_type: qwen2_5_omni_thinker``) or a full released
Qwen2.5-Omni folder (``model_type: qwen2_5_omni``, whose ``thinker_config`` is used). transformers'
own config classes parse the file, so legacy spellings (``rope_scaling``, ``torch_dtype``) are
read the way transformers reads them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from transformers import Qwen2_5OmniThinkerConfig

from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.model_config_file import OmniModelConfig
from megatron_omni.models.config import ModelConfig
from megatron_omni.models.encoders import hf_audio_config, hf_vision_config
from megatron_omni.models.omni_config import AudioEncoderConfig, OmniConfig, OmniTokenIds, VisionEncoderConfig

THINKER_TYPE = "qwen2_5_omni_thinker"
FULL_MODEL_TYPE = "qwen2_5_omni"
# ModelConfig field -> transformers text-config attribute (rope, tying and activation aside).
TEXT_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "norm_epsilon": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
    "attention_dropout": "attention_dropout",
}
# OmniTokenIds field -> transformers thinker-config attribute.
TOKEN_FIELDS = {
    "audio": "audio_token_index",
    "image": "image_token_index",
    "video": "video_token_index",
    "audio_start": "audio_start_token_id",
    "audio_end": "audio_end_token_id",
    "vision_start": "vision_start_token_id",
    "vision_end": "vision_end_token_id",
    "user": "user_token_id",
}
# transformers' thinker config does not declare these two, although its rope-index code reads
# them; released checkpoints carry them. Qwen2.5-Omni's tokenizer values serve as the fallback.
TOKEN_FALLBACKS = {"vision_start_token_id": 151652, "vision_end_token_id": 151653}

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path.parent}: no config.json (expected a Hugging Face model folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None


def thinker_config_dict(hf_dir: str | Path) -> dict:
    """The thinker part of ``config.json``; a clear error for any other architecture."""
    path = Path(hf_dir) / "config.json"
    data = _load_json(path)
    model_type = data.get("model_type")
    if model_type == THINKER_TYPE:
        return data
    if model_type == FULL_MODEL_TYPE:
        if not isinstance(data.get("thinker_config"), dict):
            raise ConversionError(f"{path}: model_type {FULL_MODEL_TYPE!r} but no thinker_config section")
        return data["thinker_config"]
    raise ConversionError(
        f"{path}: model_type {model_type!r} (architectures {data.get('architectures')}) is not a Qwen2.5-Omni "
        f"thinker; this converter reads {THINKER_TYPE!r} folders and full {FULL_MODEL_TYPE!r} checkpoints"
    )


def _require(path: Path, field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConversionError(f"{path}: {field}={value!r} is not supported (supported: {list(allowed)})")


def _dtype_name(thinker: Qwen2_5OmniThinkerConfig) -> str | None:
    dtype = getattr(thinker, "dtype", None) or getattr(thinker, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return DTYPE_NAMES.get(dtype)


def tower_config_from_hf(cls, hf_config, **overrides):
    """A tower dataclass from transformers' tower config: the field names are the same."""
    values = {f.name: getattr(hf_config, f.name) for f in dataclasses.fields(cls) if f.name not in overrides}
    values = {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}
    return cls(**values, **overrides)


def read_hf_config(hf_dir: str | Path) -> tuple[OmniModelConfig, str | None]:
    """The model description of a HF thinker folder, and the dtype its config names (or None)."""
    path = Path(hf_dir) / "config.json"
    thinker = Qwen2_5OmniThinkerConfig.from_dict(thinker_config_dict(hf_dir))
    text, vision, audio = thinker.text_config, thinker.vision_config, thinker.audio_config
    rope = dict(text.rope_parameters or {})
    _require(path, "text_config.hidden_act", text.hidden_act, ["silu"])
    _require(path, "text_config.rope_parameters.rope_type", rope.get("rope_type", "default"), ["default"])
    _require(path, "text_config.use_sliding_window", bool(text.use_sliding_window), [False])
    if "mrope_section" not in rope:
        raise ConversionError(f"{path}: text_config has no mrope_section (3-D multimodal RoPE sections)")
    head_dim = getattr(text, "head_dim", None)
    if head_dim not in (None, text.hidden_size // text.num_attention_heads):
        raise ConversionError(f"{path}: text_config.head_dim={head_dim} differs from hidden_size / num_attention_heads")
    model = ModelConfig(
        **{ours: getattr(text, theirs) for ours, theirs in TEXT_FIELDS.items()},
        rotary_base=float(rope.get("rope_theta", 1_000_000.0)),
        mrope_section=list(rope["mrope_section"]),
        # The thinker's own flag decides (the text sub-config's flag is not the one transformers uses).
        tie_word_embeddings=bool(thinker.tie_word_embeddings),
        add_qkv_bias=True,
    )
    vision_rope = dict(getattr(vision, "rope_parameters", None) or {})
    omni = OmniConfig(
        vision=tower_config_from_hf(
            VisionEncoderConfig, vision, rope_theta=float(vision_rope.get("rope_theta", 10000.0))
        ),
        audio=tower_config_from_hf(AudioEncoderConfig, audio),
        tokens=OmniTokenIds(
            **{ours: getattr(thinker, theirs, TOKEN_FALLBACKS.get(theirs)) for ours, theirs in TOKEN_FIELDS.items()}
        ),
        position_id_per_seconds=thinker.position_id_per_seconds,
        seconds_per_chunk=thinker.seconds_per_chunk,
    )
    dtype = _dtype_name(thinker)
    return OmniModelConfig(model=model, omni=omni, params_dtype=dtype or "fp32"), dtype


def to_hf_thinker_config(cfg: OmniModelConfig) -> Qwen2_5OmniThinkerConfig:
    """The transformers thinker config of a model description (inverse of read_hf_config)."""
    m, o = cfg.model, cfg.omni
    text = {theirs: getattr(m, ours) for ours, theirs in TEXT_FIELDS.items()}
    text.update(
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": m.rotary_base, "mrope_section": list(m.mrope_section)},
        tie_word_embeddings=m.tie_word_embeddings,
    )
    config = Qwen2_5OmniThinkerConfig(
        text_config=text,
        vision_config=hf_vision_config(o.vision).to_dict(),
        audio_config=hf_audio_config(o.audio).to_dict(),
        **{theirs: getattr(o.tokens, ours) for ours, theirs in TOKEN_FIELDS.items()},
        position_id_per_seconds=o.position_id_per_seconds,
        seconds_per_chunk=o.seconds_per_chunk,
        tie_word_embeddings=m.tie_word_embeddings,
    )
    config.architectures = ["Qwen2_5OmniThinkerForConditionalGeneration"]
    config.dtype = TORCH_DTYPES[cfg.params_dtype]
    return config
