"""Parameter mapping between the HF thinkers (Qwen2.5-Omni, Qwen3-Omni MoE) and OmniModel's state dict.

Decoder (per layer i; megatron names under ``language_model.``)::

    model.layers.i.input_layernorm.weight           decoder.layers.i.input_layernorm.weight
    model.layers.i.self_attn.{q,k,v}_proj.weight    decoder.layers.i.self_attention.linear_qkv.weight
    model.layers.i.self_attn.{q,k,v}_proj.bias      decoder.layers.i.self_attention.linear_qkv.bias
    model.layers.i.self_attn.o_proj.weight          decoder.layers.i.self_attention.linear_proj.weight
    model.layers.i.post_attention_layernorm.weight  decoder.layers.i.pre_mlp_layernorm.weight
    model.layers.i.mlp.{gate,up}_proj.weight        decoder.layers.i.mlp.linear_fc1.weight
    model.layers.i.mlp.down_proj.weight             decoder.layers.i.mlp.linear_fc2.weight
    model.norm.weight                               decoder.final_layernorm.weight
    model.embed_tokens.weight                       embedding.word_embeddings.weight  (rows padded)
    lm_head.weight                                  output_layer.weight  (rows padded; absent if tied)

Qwen3-Omni's MoE thinker has no QKV bias and adds, per layer i::

    model.layers.i.self_attn.{q,k}_norm.weight              decoder.layers.i.self_attention.{q,k}_layernorm.weight
    model.layers.i.mlp.gate.weight                          decoder.layers.i.mlp.router.weight
    model.layers.i.mlp.experts.e.{gate,up}_proj.weight      decoder.layers.i.mlp.experts.local_experts.e.linear_fc1.weight
    model.layers.i.mlp.experts.e.down_proj.weight           decoder.layers.i.mlp.experts.local_experts.e.linear_fc2.weight

in place of the dense MLP; its vision tower's DeepStack mergers (``visual.merger_list.*``) are
tower parameters like the rest. megatron's fused QKV is grouped per query group: for each of the G key/value heads, its
H/G query heads, then its key head, then its value head. SwiGLU's fc1 holds [gate; up]. The
towers keep transformers' names (``visual.*``, ``audio_tower.*``) on both sides. Every
transform is a reshape, concatenation or slice, so a round trip is bit-exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from megatron_omni.convert.model_config_file import OmniModelConfig
from megatron_omni.models.encoders import build_audio_encoder, build_vision_encoder

Transform = Literal["copy", "qkv", "gate_up", "vocab"]
LM = "language_model."


@dataclass(frozen=True)
class ParamMapping:
    megatron: str
    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    transform: Transform = "copy"


def tower_parameter_shapes(cfg: OmniModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of both towers, from a weightless (meta-device) build."""
    shapes = {}
    omni, family = cfg.omni, cfg.model.family
    with torch.device("meta"):
        towers = {
            "visual": build_vision_encoder(omni.vision, torch.float32, "eager", initialize=False, family=family),
            "audio_tower": build_audio_encoder(omni.audio, torch.float32, "eager", initialize=False, family=family),
        }
    for prefix, tower in towers.items():
        shapes.update({f"{prefix}.{name}": tuple(t.shape) for name, t in tower.state_dict().items()})
    return shapes


def _attention(m, hf: str, mg: str) -> list[ParamMapping]:
    """Self-attention: fused QKV (its bias if the family has one), output projection and, for
    Qwen3, the per-head RMSNorms of queries and keys."""
    h, q, kv = m.hidden_size, m.num_attention_heads * m.head_dim, m.num_query_groups * m.head_dim
    projections = (f"{hf}q_proj", f"{hf}k_proj", f"{hf}v_proj")
    mappings = [
        ParamMapping(f"{mg}linear_qkv.weight", tuple(f"{p}.weight" for p in projections), ((q, h), (kv, h), (kv, h)), "qkv"),
    ]
    if m.add_qkv_bias:
        biases = tuple(f"{p}.bias" for p in projections)
        mappings.append(ParamMapping(f"{mg}linear_qkv.bias", biases, ((q,), (kv,), (kv,)), "qkv"))
    mappings.append(ParamMapping(f"{mg}linear_proj.weight", (f"{hf}o_proj.weight",), ((h, q),)))
    if m.qk_layernorm:
        mappings += [ParamMapping(f"{mg}{ours}_layernorm.weight", (f"{hf}{ours}_norm.weight",), ((m.head_dim,),))
                     for ours in ("q", "k")]
    return mappings


def _mlp(h: int, ffn: int, hf: str, mg: str) -> list[ParamMapping]:
    """A SwiGLU MLP: fc1 holds [gate; up]."""
    return [
        ParamMapping(f"{mg}linear_fc1.weight", (f"{hf}gate_proj.weight", f"{hf}up_proj.weight"), ((ffn, h), (ffn, h)), "gate_up"),
        ParamMapping(f"{mg}linear_fc2.weight", (f"{hf}down_proj.weight",), ((h, ffn),)),
    ]


def _experts(m, hf: str, mg: str) -> list[ParamMapping]:
    """A MoE layer: the router (transformers' ``gate``) and one SwiGLU MLP per expert, keyed by
    its global index on both sides (megatron's state dict at EP = 1; the checkpoint stores one
    key per layer with an expert axis, which EP ranks load their slice of)."""
    mappings = [ParamMapping(f"{mg}router.weight", (f"{hf}gate.weight",), ((m.num_moe_experts, m.hidden_size),))]
    for e in range(m.num_moe_experts):
        mappings += _mlp(m.hidden_size, m.moe_ffn_hidden_size, f"{hf}experts.{e}.", f"{mg}experts.local_experts.{e}.")
    return mappings


class OmniParamMap:
    """All mappings of one model, with the tensor transforms in both directions."""

    def __init__(self, cfg: OmniModelConfig, padded_vocab: int):
        m = cfg.model
        self.family = m.family
        self.vocab_size = m.vocab_size
        self.padded_vocab = padded_vocab
        self.num_query_groups = m.num_query_groups
        self.head_dim = m.head_dim
        self.q_rows_per_group = m.num_attention_heads // m.num_query_groups * m.head_dim
        self.mappings: list[ParamMapping] = [
            ParamMapping(name, (name,), (shape,)) for name, shape in tower_parameter_shapes(cfg).items()
        ]
        h = m.hidden_size
        self.mappings.append(
            ParamMapping(f"{LM}embedding.word_embeddings.weight", ("model.embed_tokens.weight",), ((m.vocab_size, h),), "vocab"))
        for i in range(m.num_layers):
            hf, mg = f"model.layers.{i}.", f"{LM}decoder.layers.{i}."
            self.mappings += [
                ParamMapping(f"{mg}input_layernorm.weight", (f"{hf}input_layernorm.weight",), ((h,),)),
                *_attention(m, f"{hf}self_attn.", f"{mg}self_attention."),
                ParamMapping(f"{mg}pre_mlp_layernorm.weight", (f"{hf}post_attention_layernorm.weight",), ((h,),)),
                *(_experts(m, f"{hf}mlp.", f"{mg}mlp.") if m.num_moe_experts else
                  _mlp(h, m.ffn_hidden_size, f"{hf}mlp.", f"{mg}mlp.")),
            ]
        self.mappings.append(ParamMapping(f"{LM}decoder.final_layernorm.weight", ("model.norm.weight",), ((h,),)))
        if not m.tie_word_embeddings:
            self.mappings.append(ParamMapping(f"{LM}output_layer.weight", ("lm_head.weight",), ((m.vocab_size, h),), "vocab"))

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: shape for mp in self.mappings for key, shape in zip(mp.hf, mp.hf_shapes)}

    def megatron_names(self) -> set[str]:
        return {mp.megatron for mp in self.mappings}

    # ------------------------------------------------------------------ HF -> megatron

    def to_megatron(self, mapping: ParamMapping, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The megatron tensor built from ``tensors`` (in the order of ``mapping.hf``)."""
        if mapping.transform == "copy":
            return tensors[0]
        if mapping.transform == "gate_up":
            return torch.cat(tensors, dim=0)
        if mapping.transform == "vocab":
            (table,) = tensors
            padded = table.new_zeros((self.padded_vocab, *table.shape[1:]))
            padded[: self.vocab_size] = table
            return padded
        q, k, v = tensors
        groups, rest = self.num_query_groups, q.shape[1:]
        return torch.cat(
            [q.reshape(groups, self.q_rows_per_group, *rest), k.reshape(groups, self.head_dim, *rest),
             v.reshape(groups, self.head_dim, *rest)],
            dim=1,
        ).reshape(-1, *rest)

    # ------------------------------------------------------------------ megatron -> HF

    def to_hf(self, mapping: ParamMapping, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The HF tensors (in the order of ``mapping.hf``), each a fresh contiguous copy."""
        if mapping.transform == "copy":
            parts = [tensor]
        elif mapping.transform == "gate_up":
            parts = list(tensor.chunk(2, dim=0))
        elif mapping.transform == "vocab":
            parts = [tensor[: self.vocab_size]]
        else:
            rest = tensor.shape[1:]
            grouped = tensor.reshape(self.num_query_groups, -1, *rest)
            q, k, v = grouped.split([self.q_rows_per_group, self.head_dim, self.head_dim], dim=1)
            parts = [part.reshape(-1, *rest) for part in (q, k, v)]
        # Own storage per tensor: safetensors refuses tensors that share memory.
        return [part.clone(memory_format=torch.contiguous_format) for part in parts]
