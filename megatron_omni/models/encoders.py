"""The vision and audio towers: transformers' Qwen2.5-Omni or Qwen3-Omni modules (by the model
family), built from our dataclasses.

Reusing transformers' modules keeps the towers numerically identical to the reference model and
their parameter names identical to the released checkpoints (``visual.*``, ``audio_tower.*``).
They are small next to the decoder (about 0.7B parameters each in the 7B model), so they are
replicated on the first pipeline stage rather than tensor-parallel: every TP rank computes the
same features from the same inputs.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import (
    Qwen2_5OmniAudioEncoderConfig,
    Qwen2_5OmniVisionEncoderConfig,
)
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
    Qwen2_5OmniAudioEncoder,
    Qwen2_5OmniVisionEncoder,
)
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
    Qwen3OmniMoeAudioEncoderConfig,
    Qwen3OmniMoeVisionEncoderConfig,
)
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
    Qwen3OmniMoeAudioEncoder,
    Qwen3OmniMoeVisionEncoder,
)

from megatron_omni.models.config import ModelFamily
from megatron_omni.models.omni_config import (
    QWEN3_AUDIO_FIELDS,
    QWEN3_VISION_FIELDS,
    AudioEncoderConfig,
    VisionEncoderConfig,
)

# Per family: transformers' (config, module) classes of each tower, and our fields the family's
# config does not take.
_VISION = {
    "qwen2_5_omni": (Qwen2_5OmniVisionEncoderConfig, Qwen2_5OmniVisionEncoder, QWEN3_VISION_FIELDS),
    "qwen3_omni_moe": (Qwen3OmniMoeVisionEncoderConfig, Qwen3OmniMoeVisionEncoder,
                       ("window_size", "fullatt_block_indexes")),
}
_AUDIO = {
    "qwen2_5_omni": (Qwen2_5OmniAudioEncoderConfig, Qwen2_5OmniAudioEncoder, QWEN3_AUDIO_FIELDS),
    "qwen3_omni_moe": (Qwen3OmniMoeAudioEncoderConfig, Qwen3OmniMoeAudioEncoder, ()),
}


def _fields(cfg, skipped: tuple[str, ...]) -> dict:
    return {name: value for name, value in dataclasses.asdict(cfg).items() if name not in skipped}


def hf_vision_config(cfg: VisionEncoderConfig, family: ModelFamily = "qwen2_5_omni"):
    """transformers' config of the same tower (our field names are transformers' names)."""
    config_cls, _, skipped = _VISION[family]
    fields = _fields(cfg, skipped)
    rope_theta = fields.pop("rope_theta")
    return config_cls(**fields, rope_parameters={"rope_type": "axial", "rope_theta": rope_theta})


def hf_audio_config(cfg: AudioEncoderConfig, family: ModelFamily = "qwen2_5_omni"):
    config_cls, _, skipped = _AUDIO[family]
    return config_cls(**_fields(cfg, skipped))


def _skip_init():
    """transformers' context that leaves weights uninitialised (they are loaded right after)."""
    from transformers.initialization import no_init_weights

    return no_init_weights()


def _build_tower(tower_cls, hf_config, dtype: torch.dtype, attn_implementation: str, initialize: bool):
    with contextlib.nullcontext() if initialize else _skip_init():
        tower = tower_cls._from_config(hf_config, attn_implementation=attn_implementation)
    return cast_parameters(tower, dtype)


def build_vision_encoder(
    cfg: VisionEncoderConfig, dtype: torch.dtype, attn_implementation: str, initialize: bool = True,
    family: ModelFamily = "qwen2_5_omni",
) -> torch.nn.Module:
    tower_cls = _VISION[family][1]
    return _build_tower(tower_cls, hf_vision_config(cfg, family), dtype, attn_implementation, initialize)


def build_audio_encoder(
    cfg: AudioEncoderConfig, dtype: torch.dtype, attn_implementation: str, initialize: bool = True,
    family: ModelFamily = "qwen2_5_omni",
) -> torch.nn.Module:
    tower_cls = _AUDIO[family][1]
    return _build_tower(tower_cls, hf_audio_config(cfg, family), dtype, attn_implementation, initialize)


def checkpoint_blocks(tower: torch.nn.Module) -> None:
    """Recompute each block of a tower in the backward instead of keeping its activations
    (transformers' gradient checkpointing: torch.utils.checkpoint around every block, in
    training mode only). Non-reentrant, so frozen inputs and frozen towers need no workaround."""
    tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast parameters only: rotary frequency buffers stay fp32, as in transformers' bf16 models."""
    for param in module.parameters():
        param.data = param.data.to(dtype)
    return module


def fp32_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the fp32 buffers (rotary frequencies, sinusoid tables) to restore after a cast."""
    return {name: buf.detach().clone() for name, buf in module.named_buffers() if buf.dtype == torch.float32}


def restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back ``saved`` buffers in fp32 on the device the module's buffers now live on."""
    for name, value in saved.items():
        owner_name, _, buffer_name = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        current = owner._buffers[buffer_name]
        if current.dtype != torch.float32:
            owner._buffers[buffer_name] = value.to(current.device)


def _merged_tokens(output) -> torch.Tensor:
    """The per-token features of a tower's output, across transformers versions: 5.x returns a
    model output whose ``pooler_output`` holds the merged tokens; 4.x returns a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    return pooled if pooled is not None else output.last_hidden_state


@dataclass
class VisionFeatures:
    """The merged tokens [n, out_hidden] of a vision-tower call, and (Qwen3-Omni) the DeepStack
    features [n, out_hidden] of each ``deepstack_visual_indexes`` block, in the same token order."""

    tokens: torch.Tensor
    deepstack: list[torch.Tensor]


def encode_vision(tower: torch.nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> VisionFeatures:
    """[sum_i t_i*h_i*w_i, C*T*P*P] patches -> [sum_i t_i*h_i*w_i / merge^2, out_hidden] tokens.

    Images (t = 1) and videos take the same tower: one call for a batch's images, one for its
    videos, as transformers' thinker does."""
    dtype = tower.patch_embed.proj.weight.dtype
    output = tower(pixel_values.to(dtype), grid_thw=grid_thw)
    return VisionFeatures(_merged_tokens(output), list(getattr(output, "deepstack_features", None) or []))


def audio_feature_lengths(input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Valid mel frames per audio clip (all frames when no mask is given)."""
    if feature_attention_mask is None:
        return torch.full((input_features.shape[0],), input_features.shape[-1], dtype=torch.long, device=input_features.device)
    return feature_attention_mask.sum(dim=1).long()


def audio_token_counts(feature_lengths: torch.Tensor) -> torch.Tensor:
    """Audio placeholder tokens per clip: the stride-2 convolution, then stride-2 pooling."""
    after_conv = (feature_lengths - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def encode_audio(
    tower: torch.nn.Module, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """[clips, mel, frames] padded log-mel features -> [sum of audio tokens, output_dim] tokens."""
    lengths = audio_feature_lengths(input_features, feature_attention_mask)
    frames = input_features.permute(0, 2, 1)  # [clips, frames, mel]
    if feature_attention_mask is not None:
        frames = frames[feature_attention_mask.bool()]
    else:
        frames = frames.reshape(-1, frames.shape[-1])
    # The tower takes all clips' valid frames concatenated along time: [mel, total frames].
    packed = frames.permute(1, 0).to(next(tower.parameters()).dtype)
    return _merged_tokens(tower(packed, feature_lens=lengths))
