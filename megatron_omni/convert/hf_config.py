"""Hugging Face thinker config.json <-> OmniModelConfig, for the Qwen2.5-Omni and Qwen3-Omni MoE families.

Accepted inputs: a thinker folder (``model_type: qwen2_5_omni_thinker`` / ``qwen3_omni_moe_thinker``)
or a full released folder (``model_type: qwen2_5_omni`` / ``qwen3_omni_moe``, whose ``thinker_config``
is used). transformers' own config classes parse the file, so legacy spellings (``rope_scaling``,
``torch_dtype``) are read the way transformers reads them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5OmniThinkerConfig, Qwen3OmniMoeThinkerConfig

from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.model_config_file import OmniModelConfig
from megatron_omni.models.config import ModelConfig
from megatron_omni.models.encoders import hf_audio_config, hf_vision_config
from megatron_omni.models.omni_config import AudioEncoderConfig, OmniConfig, OmniTokenIds, VisionEncoderConfig

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
# ModelConfig field -> transformers text-config attribute of Qwen3-Omni's MoE decoder.
MOE_TEXT_FIELDS = {
    "num_moe_experts": "num_experts",
    "moe_ffn_hidden_size": "moe_intermediate_size",
    "moe_router_topk": "num_experts_per_tok",
    "moe_norm_topk_prob": "norm_topk_prob",
    "moe_aux_loss_coeff": "router_aux_loss_coef",
    "kv_channels": "head_dim",
}


@dataclass(frozen=True)
class Family:
    """One model family the converter reads and writes: its config.json types and token names."""

    name: str  # ModelConfig.family
    thinker_type: str
    full_type: str
    thinker_config: type
    architecture: str
    # OmniTokenIds field -> transformers thinker-config attribute.
    tokens: dict[str, str]
    # Token ids transformers' thinker config does not declare; the family's tokenizer values
    # serve when config.json lacks them (released checkpoints carry them).
    token_fallbacks: dict[str, int]


_TOKENS = {"audio_start": "audio_start_token_id", "audio_end": "audio_end_token_id",
           "vision_start": "vision_start_token_id", "vision_end": "vision_end_token_id", "user": "user_token_id"}
QWEN2_5_OMNI = Family(
    "qwen2_5_omni", "qwen2_5_omni_thinker", "qwen2_5_omni", Qwen2_5OmniThinkerConfig,
    "Qwen2_5OmniThinkerForConditionalGeneration",
    {"audio": "audio_token_index", "image": "image_token_index", "video": "video_token_index", **_TOKENS},
    {"vision_start_token_id": 151652, "vision_end_token_id": 151653},
)
QWEN3_OMNI_MOE = Family(
    "qwen3_omni_moe", "qwen3_omni_moe_thinker", "qwen3_omni_moe", Qwen3OmniMoeThinkerConfig,
    "Qwen3OmniMoeThinkerForConditionalGeneration",
    {"audio": "audio_token_id", "image": "image_token_id", "video": "video_token_id", **_TOKENS},
    {"audio_end_token_id": 151670, "vision_start_token_id": 151652, "vision_end_token_id": 151653},
)
FAMILIES = {family.name: family for family in (QWEN2_5_OMNI, QWEN3_OMNI_MOE)}

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path.parent}: no config.json (expected a Hugging Face model folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None


def thinker_config_dict(hf_dir: str | Path) -> tuple[Family, dict]:
    """The family and the thinker part of ``config.json``; a clear error for any other architecture."""
    path = Path(hf_dir) / "config.json"
    data = _load_json(path)
    model_type = data.get("model_type")
    for family in FAMILIES.values():
        if model_type == family.thinker_type:
            return family, data
        if model_type == family.full_type:
            if not isinstance(data.get("thinker_config"), dict):
                raise ConversionError(f"{path}: model_type {family.full_type!r} but no thinker_config section")
            return family, data["thinker_config"]
    readable = ", ".join(f"{f.thinker_type!r} / {f.full_type!r}" for f in FAMILIES.values())
    raise ConversionError(
        f"{path}: model_type {model_type!r} (architectures {data.get('architectures')}) is not a thinker this "
        f"converter reads; it reads thinker folders and full checkpoints of the types {readable}"
    )


def _require(path: Path, field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConversionError(f"{path}: {field}={value!r} is not supported (supported: {list(allowed)})")


def _dtype_name(thinker) -> str | None:
    dtype = getattr(thinker, "dtype", None) or getattr(thinker, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return DTYPE_NAMES.get(dtype)


def tower_config_from_hf(cls, hf_config, **overrides):
    """A tower dataclass from transformers' tower config: the field names are the same; a field the
    family's tower does not have (Qwen2.5's window attention in a Qwen3 tower, and the reverse)
    keeps its default, which the family's tower ignores."""
    values = {f.name: getattr(hf_config, f.name) for f in dataclasses.fields(cls)
              if f.name not in overrides and hasattr(hf_config, f.name)}
    values = {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}
    return cls(**values, **overrides)


def _text_fields(path: Path, family: Family, text) -> dict:
    """ModelConfig fields of the family's decoder beyond TEXT_FIELDS, with its unsupported options refused."""
    if family is QWEN2_5_OMNI:
        _require(path, "text_config.use_sliding_window", bool(text.use_sliding_window), [False])
        head_dim = getattr(text, "head_dim", None)
        if head_dim not in (None, text.hidden_size // text.num_attention_heads):
            raise ConversionError(f"{path}: text_config.head_dim={head_dim} differs from hidden_size / num_attention_heads")
        return {"add_qkv_bias": True}
    _require(path, "text_config.sliding_window", text.sliding_window, [None])
    _require(path, "text_config.decoder_sparse_step", text.decoder_sparse_step, [1])
    _require(path, "text_config.mlp_only_layers", list(text.mlp_only_layers), [[]])
    _require(path, "text_config.attention_bias", bool(text.attention_bias), [False])
    _require(path, "text_config.rope_parameters.mrope_interleaved",
             bool(dict(text.rope_parameters or {}).get("mrope_interleaved")), [True])
    return {
        **{ours: getattr(text, theirs) for ours, theirs in MOE_TEXT_FIELDS.items()},
        "add_qkv_bias": False,
        "qk_layernorm": True,
        "mrope_interleaved": True,
    }


def read_hf_config(hf_dir: str | Path) -> tuple[OmniModelConfig, str | None]:
    """The model description of a HF thinker folder, and the dtype its config names (or None)."""
    path = Path(hf_dir) / "config.json"
    family, data = thinker_config_dict(hf_dir)
    thinker = family.thinker_config.from_dict(data)
    text, vision, audio = thinker.text_config, thinker.vision_config, thinker.audio_config
    rope = dict(text.rope_parameters or {})
    _require(path, "text_config.hidden_act", text.hidden_act, ["silu"])
    _require(path, "text_config.rope_parameters.rope_type", rope.get("rope_type", "default"), ["default"])
    if "mrope_section" not in rope:
        raise ConversionError(f"{path}: text_config has no mrope_section (3-D multimodal RoPE sections)")
    model = ModelConfig(
        family=family.name,
        **{ours: getattr(text, theirs) for ours, theirs in TEXT_FIELDS.items()},
        **_text_fields(path, family, text),
        rotary_base=float(rope.get("rope_theta", 1_000_000.0)),
        mrope_section=list(rope["mrope_section"]),
        # The thinker's own flag decides (the text sub-config's flag is not the one transformers uses).
        tie_word_embeddings=bool(thinker.tie_word_embeddings),
    )
    vision_rope = dict(getattr(vision, "rope_parameters", None) or {})
    omni = OmniConfig(
        vision=tower_config_from_hf(
            VisionEncoderConfig, vision, rope_theta=float(vision_rope.get("rope_theta", 10000.0))
        ),
        audio=tower_config_from_hf(AudioEncoderConfig, audio),
        tokens=OmniTokenIds(**{
            ours: getattr(thinker, theirs, None) or family.token_fallbacks[theirs]
            for ours, theirs in family.tokens.items()
        }),
        position_id_per_seconds=thinker.position_id_per_seconds,
        seconds_per_chunk=getattr(thinker, "seconds_per_chunk", OmniConfig.seconds_per_chunk),
    )
    dtype = _dtype_name(thinker)
    return OmniModelConfig(model=model, omni=omni, params_dtype=dtype or "fp32"), dtype


def to_hf_thinker_config(cfg: OmniModelConfig):
    """The transformers thinker config of a model description (inverse of read_hf_config)."""
    m, o = cfg.model, cfg.omni
    family = FAMILIES[m.family]
    text = {theirs: getattr(m, ours) for ours, theirs in TEXT_FIELDS.items()}
    rope = {"rope_type": "default", "rope_theta": m.rotary_base, "mrope_section": list(m.mrope_section)}
    if family is QWEN3_OMNI_MOE:
        text.update({theirs: getattr(m, ours) for ours, theirs in MOE_TEXT_FIELDS.items()})
        text.update(head_dim=m.head_dim, attention_bias=False)
        rope["mrope_interleaved"] = True
    text.update(hidden_act="silu", rope_parameters=rope, tie_word_embeddings=m.tie_word_embeddings)
    config = family.thinker_config(
        text_config=text,
        vision_config=hf_vision_config(o.vision, m.family).to_dict(),
        audio_config=hf_audio_config(o.audio, m.family).to_dict(),
        position_id_per_seconds=o.position_id_per_seconds,
        tie_word_embeddings=m.tie_word_embeddings,
    )
    # Set as attributes: transformers' rope-index code reads some of these ids (and Qwen2.5-Omni's
    # seconds_per_chunk) without the thinker config declaring them.
    for ours, theirs in family.tokens.items():
        setattr(config, theirs, getattr(o.tokens, ours))
    if family is QWEN2_5_OMNI:
        config.seconds_per_chunk = o.seconds_per_chunk
    config.architectures = [family.architecture]
    config.dtype = TORCH_DTYPES[cfg.params_dtype]
    return config
