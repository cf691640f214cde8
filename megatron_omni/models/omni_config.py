"""Typed configuration of the omni-modal parts of the model: vision and audio towers, special
token ids, time alignment, freezing and modality masking.

The language decoder keeps its own `megatron_omni.models.config.ModelConfig`. As there, the defaults are
a tiny model for CPU runs (it matches ModelConfig's defaults: hidden size 64, vocabulary 512);
docs/MODEL.md lists the Qwen2.5-Omni-7B values, and the HF -> Megatron converter reads them from
the checkpoint's config.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_omni.config import ConfigError
from megatron_omni.models.config import ModelConfig


@dataclass
class VisionEncoderConfig:
    """Qwen2.5-VL-style vision tower: 3-D patch embedding, window attention with a few
    full-attention blocks, 2-D rotary positions, 2x2 patch merger into the decoder width.

    Qwen3-Omni's tower (``model.family: qwen3_omni_moe``) attends over whole images instead of
    windows (window_size and fullatt_block_indexes are Qwen2.5-Omni's only), adds a learned position
    grid of ``num_position_embeddings`` entries and merges the outputs of the
    ``deepstack_visual_indexes`` blocks for DeepStack; those two keys are Qwen3-Omni's only.
    """

    depth: int = 2
    hidden_size: int = 32
    intermediate_size: int = 64
    num_heads: int = 2
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    # Attention window, in pixels, of the blocks not listed in fullatt_block_indexes.
    window_size: int = 56
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [1])
    # Width of the merged tokens: must equal the decoder's hidden size.
    out_hidden_size: int = 64
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    num_position_embeddings: int | None = None
    # Blocks whose merged outputs are added to the hidden states after decoder layers 0, 1, ...
    deepstack_visual_indexes: list[int] | None = None


@dataclass
class AudioEncoderConfig:
    """Whisper-style audio tower: two convolutions over 128-bin log-mel frames, a transformer over
    windows of 2 * n_window frames, stride-2 average pooling, projection into the decoder width
    (Qwen2.5-Omni). Qwen3-Omni's tower takes chunks of 2 * n_window frames through three stride-2
    2-D convolutions and attends within windows of n_window_infer frames."""

    num_mel_bins: int = 128
    encoder_layers: int = 2
    encoder_attention_heads: int = 2
    encoder_ffn_dim: int = 64
    d_model: int = 32
    n_window: int = 100
    max_source_positions: int = 1500
    # Width of the audio tokens: must equal the decoder's hidden size.
    output_dim: int = 64
    activation_function: str = "gelu"
    scale_embedding: bool = False
    # Qwen3-Omni's tower only: width of its three 2-D convolutions, and the attention window in
    # frames (transformers' names).
    downsample_hidden_size: int | None = None
    n_window_infer: int | None = None


QWEN3_VISION_FIELDS = ("num_position_embeddings", "deepstack_visual_indexes")
QWEN3_AUDIO_FIELDS = ("downsample_hidden_size", "n_window_infer")


@dataclass
class OmniTokenIds:
    """Ids of the placeholder and bracket tokens (defaults fit the tiny 512-token vocabulary;
    Qwen2.5-Omni's tokenizer uses 151646..151656 and 872)."""

    audio: int = 500
    image: int = 501
    video: int = 502
    audio_start: int = 503
    audio_end: int = 504
    vision_start: int = 505
    vision_end: int = 506
    user: int = 507


@dataclass
class OmniConfig:
    vision: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    tokens: OmniTokenIds = field(default_factory=OmniTokenIds)
    # TMRoPE time alignment: temporal position ids per second, and the chunk length in seconds
    # in which the audio of a video is interleaved with its frames.
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    # Frozen towers get requires_grad=False (the reference RL run freezes the vision tower).
    freeze_vision: bool = False
    freeze_audio: bool = False
    # Fraction of a modality's input features zeroed by a masked forward (OPPO uses 0.9).
    modality_mask_ratio: float = 0.9
    # Attention kernel of the towers (transformers' names); "sdpa" runs everywhere.
    encoder_attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    def validate(self, key: str) -> None:
        v, a = self.vision, self.audio
        if v.hidden_size % v.num_heads:
            raise ConfigError(
                f"{key}.vision.hidden_size ({v.hidden_size}) must be divisible by {key}.vision.num_heads ({v.num_heads})"
            )
        if a.d_model % a.encoder_attention_heads:
            raise ConfigError(
                f"{key}.audio.d_model ({a.d_model}) must be divisible by {key}.audio.encoder_attention_heads "
                f"({a.encoder_attention_heads})"
            )
        bad_blocks = [i for i in v.fullatt_block_indexes if not 0 <= i < v.depth]
        if bad_blocks:
            raise ConfigError(f"{key}.vision.fullatt_block_indexes {bad_blocks} outside 0..{v.depth - 1}")
        ids = list(vars(self.tokens).values())
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{key}.tokens must be distinct, got {vars(self.tokens)}")
        if not 0.0 <= self.modality_mask_ratio <= 1.0:
            raise ConfigError(f"{key}.modality_mask_ratio ({self.modality_mask_ratio}) must lie in [0, 1]")
        if self.position_id_per_seconds < 1 or self.seconds_per_chunk <= 0:
            raise ConfigError(f"{key}.position_id_per_seconds ({self.position_id_per_seconds}) must be >= 1 and "
                              f"{key}.seconds_per_chunk ({self.seconds_per_chunk}) positive")


def validate_omni(model: ModelConfig, omni: OmniConfig, prefix: str = "omni") -> None:
    """The omni section's own rules, then those between the towers, the token ids and the decoder;
    errors name the key."""
    omni.validate(prefix)
    v, a = omni.vision, omni.audio
    if v.out_hidden_size != model.hidden_size:
        raise ConfigError(
            f"{prefix}.vision.out_hidden_size ({v.out_hidden_size}) must equal model.hidden_size ({model.hidden_size})"
        )
    if a.output_dim != model.hidden_size:
        raise ConfigError(f"{prefix}.audio.output_dim ({a.output_dim}) must equal model.hidden_size ({model.hidden_size})")
    for name, token_id in vars(omni.tokens).items():
        if not 0 <= token_id < model.vocab_size:
            raise ConfigError(f"{prefix}.tokens.{name} ({token_id}) must lie in 0..model.vocab_size-1 ({model.vocab_size - 1})")
    if model.mrope_section is None:
        raise ConfigError("model.mrope_section must be set: the omni model uses 3-D multimodal RoPE")
    qwen3 = model.family == "qwen3_omni_moe"
    for section, names in ((v, QWEN3_VISION_FIELDS), (a, QWEN3_AUDIO_FIELDS)):
        where = f"{prefix}.{'vision' if section is v else 'audio'}"
        for name in names:
            if qwen3 and getattr(section, name) is None:
                raise ConfigError(f"{where}.{name} must be set for model.family=qwen3_omni_moe")
            if not qwen3 and getattr(section, name) is not None:
                raise ConfigError(f"{where}.{name} applies to model.family=qwen3_omni_moe only (family is "
                                  f"{model.family}): set it to null")
    if qwen3:
        bad = [i for i in v.deepstack_visual_indexes if not 0 <= i < v.depth]
        if bad:
            raise ConfigError(f"{prefix}.vision.deepstack_visual_indexes {bad} outside 0..{v.depth - 1}")
        if len(v.deepstack_visual_indexes) > model.num_layers:
            raise ConfigError(f"{prefix}.vision.deepstack_visual_indexes feed {len(v.deepstack_visual_indexes)} "
                              f"decoder layers but model.num_layers is {model.num_layers}")
