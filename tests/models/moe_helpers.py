"""The oracle side of the Qwen3-Omni MoE tests: a tiny random transformers
``Qwen3OmniMoeThinkerForConditionalGeneration`` (4 decoder layers of 4 experts, top-2, interleaved MRoPE,
DeepStack after decoder layers 0 and 1), our model sections describing it, and its weights under
OmniModel's parameter names.

The mapping (HF in-memory module -> megatron, global names, experts by global index)::

    model.language_model.layers.i.self_attn.{q,k,v}_proj.weight   decoder.layers.i.self_attention.linear_qkv.weight
    model.language_model.layers.i.self_attn.{q,k}_norm.weight      decoder.layers.i.self_attention.{q,k}_layernorm.weight
    model.language_model.layers.i.self_attn.o_proj.weight          decoder.layers.i.self_attention.linear_proj.weight
    model.language_model.layers.i.input_layernorm.weight           decoder.layers.i.input_layernorm.weight
    model.language_model.layers.i.post_attention_layernorm.weight  decoder.layers.i.pre_mlp_layernorm.weight
    model.language_model.layers.i.mlp.gate.weight                  decoder.layers.i.mlp.router.weight
    model.language_model.layers.i.mlp.experts.gate_up_proj[j]      decoder.layers.i.mlp.experts.local_experts.j.linear_fc1.weight
                                                                   ([gate; up])
    model.language_model.layers.i.mlp.experts.down_proj[j]         decoder.layers.i.mlp.experts.local_experts.j.linear_fc2.weight
    model.language_model.embed_tokens.weight / model.language_model.norm.weight / lm_head.weight   as for Qwen2.5-Omni
    model.visual.* / model.audio_tower.*                           visual.* / audio_tower.*
(megatron names under ``language_model.``; saved HF folders keep one key per expert,
``...mlp.experts.<j>.{gate,up,down}_proj.weight``.)
"""
from __future__ import annotations

import torch
from omni_helpers import (
    AUDIO,
    AUDIO_END,
    AUDIO_START,
    IMAGE,
    USER,
    VIDEO,
    VISION_END,
    VISION_START,
    VOCAB,
    perturb_norms_and_biases,
)
from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

from megatron_omni.models.config import ModelConfig
from megatron_omni.models.omni_config import AudioEncoderConfig, OmniConfig, OmniTokenIds, VisionEncoderConfig
from megatron_omni.parallel.param_init import global_param_name, local_shard

TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
            norm_topk_prob=True, router_aux_loss_coef=0.001, max_position_embeddings=512, rms_norm_eps=1e-6)
ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
              temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
AUDIO_TOWER = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                   n_window=50, n_window_infer=800, output_dim=64, downsample_hidden_size=16)


def tiny_moe_thinker_config(norm_topk_prob: bool = True) -> Qwen3OmniMoeThinkerConfig:
    return Qwen3OmniMoeThinkerConfig(
        audio_token_id=AUDIO, image_token_id=IMAGE, video_token_id=VIDEO, audio_start_token_id=AUDIO_START,
        audio_end_token_id=AUDIO_END, user_token_id=USER, position_id_per_seconds=25,
        # Not declared by transformers' thinker config, yet read by its rope-index code.
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        text_config={**TEXT, "norm_topk_prob": norm_topk_prob, "rope_parameters": ROPE},
        vision_config=VISION, audio_config=AUDIO_TOWER,
    )


def make_hf_moe_thinker(seed: int = 0, norm_topk_prob: bool = True) -> Qwen3OmniMoeThinkerForConditionalGeneration:
    torch.manual_seed(seed)
    model = Qwen3OmniMoeThinkerForConditionalGeneration(tiny_moe_thinker_config(norm_topk_prob)).eval()
    with torch.no_grad():
        # transformers initialises the router at std 0.02: routing would be nearly uniform, and a
        # wrong top-k order or normalisation could hide; spread the logits.
        for layer in model.model.language_model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.5)
    return perturb_norms_and_biases(model)


def moe_model_sections(norm_topk_prob: bool = True) -> tuple[ModelConfig, OmniConfig]:
    """``model`` and ``omni`` sections of the same tiny thinker."""
    model = ModelConfig(
        family="qwen3_omni_moe", vocab_size=VOCAB, hidden_size=64, ffn_hidden_size=128, num_layers=4,
        num_attention_heads=4, num_query_groups=2, kv_channels=16, rotary_base=1e6, mrope_section=[4, 2, 2],
        mrope_interleaved=True, qk_layernorm=True, add_qkv_bias=False, tie_word_embeddings=False,
        max_position_embeddings=512, num_moe_experts=4, moe_ffn_hidden_size=32, moe_router_topk=2,
        moe_norm_topk_prob=norm_topk_prob, moe_aux_loss_coeff=0.001,
    )
    vision = VisionEncoderConfig(**{k: v for k, v in VISION.items()}, hidden_act="gelu_pytorch_tanh")
    audio = AudioEncoderConfig(**AUDIO_TOWER)
    tokens = OmniTokenIds(audio=AUDIO, image=IMAGE, video=VIDEO, audio_start=AUDIO_START, audio_end=AUDIO_END,
                          vision_start=VISION_START, vision_end=VISION_END, user=USER)
    return model, OmniConfig(vision=vision, audio=audio, tokens=tokens, position_id_per_seconds=25)


def megatron_state(hf_model, padded_vocab: int) -> dict[str, torch.Tensor]:
    """OmniModel's parameters (global names, full tensors) from the HF module's weights."""
    hf = hf_model.state_dict()
    text = hf_model.config.text_config
    groups, head_dim = text.num_key_value_heads, text.head_dim
    q_rows = text.num_attention_heads // groups * head_dim
    lm = "language_model."
    out = {}
    for key, value in hf.items():
        if key.startswith(("model.visual.", "model.audio_tower.")):
            out[key.removeprefix("model.")] = value
    for table, name in (("model.language_model.embed_tokens.weight", "embedding.word_embeddings.weight"),
                        ("lm_head.weight", "output_layer.weight")):
        padded = hf[table].new_zeros(padded_vocab, hf[table].shape[1])
        padded[: hf[table].shape[0]] = hf[table]
        out[lm + name] = padded
    out[lm + "decoder.final_layernorm.weight"] = hf["model.language_model.norm.weight"]
    for i in range(text.num_hidden_layers):
        src, dst = f"model.language_model.layers.{i}.", f"{lm}decoder.layers.{i}."
        q, k, v = (hf[f"{src}self_attn.{p}_proj.weight"] for p in "qkv")
        out[dst + "self_attention.linear_qkv.weight"] = torch.cat(
            [q.reshape(groups, q_rows, -1), k.reshape(groups, head_dim, -1), v.reshape(groups, head_dim, -1)], 1
        ).reshape(-1, q.shape[1])
        out[dst + "self_attention.linear_proj.weight"] = hf[src + "self_attn.o_proj.weight"]
        out[dst + "self_attention.q_layernorm.weight"] = hf[src + "self_attn.q_norm.weight"]
        out[dst + "self_attention.k_layernorm.weight"] = hf[src + "self_attn.k_norm.weight"]
        out[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
        out[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
        out[dst + "mlp.router.weight"] = hf[src + "mlp.gate.weight"]
        for j in range(text.num_experts):
            expert = f"{dst}mlp.experts.local_experts.{j}."
            out[expert + "linear_fc1.weight"] = hf[src + "mlp.experts.gate_up_proj"][j]  # [gate; up]
            out[expert + "linear_fc2.weight"] = hf[src + "mlp.experts.down_proj"][j]
    return out


@torch.no_grad()
def load_megatron_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shard (any TP / PP / EP layout) of every parameter from full tensors."""
    names = [name for name, _ in model.named_parameters()]
    missing = [global_param_name(model, n) for n in names if global_param_name(model, n) not in state]
    assert not missing, missing
    for name, param in model.named_parameters():
        shard = local_shard(state[global_param_name(model, name)], param, name)
        assert shard.shape == param.shape, (name, tuple(shard.shape), tuple(param.shape))
        param.copy_(shard)
