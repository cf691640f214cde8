"""Hugging Face Qwen2.5-Omni thinker config.json <-> OmniModelConfig.

Accepted inputs: a thinker folder (``model_type: qwen2_5_omni_thinker``) or a full released
Qwen2.5-Omni folder (``model_type: qwen2_5_omni``, whose ``thinker_config`` is used). transformers'
own config classes parse the file, so legacy spellings (``rope_scaling``, ``torch_dtype``) are
read the way transformers reads them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2_5OmniThinkerConfig

from megatron_omni.config import ModelConfig
from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.model_config_file import OmniModelConfig
from megatron_omni.models.encoders import hf_audio_config, hf_vision_config
from megatron_omni.models.omni_config import AudioEncoderConfig, OmniConfig, OmniTokenIds, VisionEncoderConfig

THINKER_TYPE = "qwen2_5_omni_thinker"
FULL_MODEL_TYPE = "qwen2_5_omni"
# transformers' thinker config does not declare these two, although its rope-index code reads
# them; released checkpoints carry them. Qwen2.5-Omni's tokenizer values serve as the fallback.
QWEN_VISION_START, QWEN_VISION_END = 151652, 151653

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
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        ffn_hidden_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_query_groups=text.num_key_value_heads,
        rotary_base=float(rope.get("rope_theta", 1_000_000.0)),
        mrope_section=list(rope["mrope_section"]),
        # The thinker's own flag decides (the text sub-config's flag is not the one transformers uses).
        tie_word_embeddings=bool(thinker.tie_word_embeddings),
        add_qkv_bias=True,
        norm_epsilon=float(text.rms_norm_eps),
        max_position_embeddings=text.max_position_embeddings,
        attention_dropout=float(text.attention_dropout),
    )
    vision_rope = dict(getattr(vision, "rope_parameters", None) or {})
    omni = OmniConfig(
        vision=VisionEncoderConfig(
            depth=vision.depth,
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_heads=vision.num_heads,
            in_channels=vision.in_channels,
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            fullatt_block_indexes=list(vision.fullatt_block_indexes),
            out_hidden_size=vision.out_hidden_size,
            hidden_act=vision.hidden_act,
            rope_theta=float(vision_rope.get("rope_theta", 10000.0)),
        ),
        audio=AudioEncoderConfig(
            num_mel_bins=audio.num_mel_bins,
            encoder_layers=audio.encoder_layers,
            encoder_attention_heads=audio.encoder_attention_heads,
            encoder_ffn_dim=audio.encoder_ffn_dim,
            d_model=audio.d_model,
            n_window=audio.n_window,
            max_source_positions=audio.max_source_positions,
            output_dim=audio.output_dim,
            activation_function=audio.activation_function,
            scale_embedding=bool(audio.scale_embedding),
        ),
        tokens=OmniTokenIds(
            audio=thinker.audio_token_index,
            image=thinker.image_token_index,
            video=thinker.video_token_index,
            audio_start=thinker.audio_start_token_id,
            audio_end=thinker.audio_end_token_id,
            vision_start=getattr(thinker, "vision_start_token_id", QWEN_VISION_START),
            vision_end=getattr(thinker, "vision_end_token_id", QWEN_VISION_END),
            user=thinker.user_token_id,
        ),
        position_id_per_seconds=thinker.position_id_per_seconds,
        seconds_per_chunk=thinker.seconds_per_chunk,
    )
    dtype = _dtype_name(thinker)
    return OmniModelConfig(model=model, omni=omni, params_dtype=dtype or "fp32"), dtype


def to_hf_thinker_config(cfg: OmniModelConfig) -> Qwen2_5OmniThinkerConfig:
    """The transformers thinker config of a model description (inverse of read_hf_config)."""
    m, o = cfg.model, cfg.omni
    text = dict(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups,
        hidden_act="silu",
        max_position_embeddings=m.max_position_embeddings,
        rms_norm_eps=m.norm_epsilon,
        attention_dropout=m.attention_dropout,
        rope_parameters={"rope_type": "default", "rope_theta": m.rotary_base, "mrope_section": list(m.mrope_section)},
        tie_word_embeddings=m.tie_word_embeddings,
    )
    config = Qwen2_5OmniThinkerConfig(
        text_config=text,
        vision_config=hf_vision_config(o.vision).to_dict(),
        audio_config=hf_audio_config(o.audio).to_dict(),
        audio_token_index=o.tokens.audio,
        image_token_index=o.tokens.image,
        video_token_index=o.tokens.video,
        audio_start_token_id=o.tokens.audio_start,
        audio_end_token_id=o.tokens.audio_end,
        vision_start_token_id=o.tokens.vision_start,
        vision_end_token_id=o.tokens.vision_end,
        user_token_id=o.tokens.user,
        position_id_per_seconds=o.position_id_per_seconds,
        seconds_per_chunk=o.seconds_per_chunk,
        tie_word_embeddings=m.tie_word_embeddings,
    )
    config.architectures = ["Qwen2_5OmniThinkerForConditionalGeneration"]
    config.dtype = TORCH_DTYPES[cfg.params_dtype]
    return config
