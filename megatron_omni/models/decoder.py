"""The Qwen2.5 language decoder as a megatron-core ``GPTModel``.

Layers come from megatron-core module specs, so one code path serves both machines: the
Transformer Engine spec (fused kernels, FP8) when TE imports and CUDA is present, the local
(plain torch) spec otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_omni.models.attention import PackedDotProductAttention
from megatron_omni.models.config import ModelConfig, ModelSections, transformer_engine_available
from megatron_omni.models.moe import moe_transformer_fields, take_uneven_token_counts
from megatron_omni.models.mrope import InterleavedMultimodalRotaryEmbedding

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def padded_vocab_size(model: ModelConfig, tensor_model_parallel_size: int) -> int:
    """Round the vocabulary up so every TP rank holds an equal, aligned slice (as megatron does)."""
    multiple = model.make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-model.vocab_size // multiple) * multiple


def uses_transformer_engine(cfg: ModelSections) -> bool:
    return cfg.precision.transformer_engine and transformer_engine_available()


def transformer_config(cfg: ModelSections) -> TransformerConfig:
    """Qwen2.5 / Qwen3: RMSNorm, SwiGLU (dense or experts), GQA, QKV bias or query/key RMSNorm,
    RoPE theta from the config."""
    m, p, prec, rc = cfg.model, cfg.parallel, cfg.precision, cfg.recompute
    dtype = _DTYPES[prec.params_dtype]
    on_gpu = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        qk_layernorm=m.qk_layernorm,
        **moe_transformer_fields(cfg),
        # TE's grouped GEMM runs all local experts in one kernel on GPU; the local spec loops over them.
        moe_grouped_gemm=m.num_moe_experts is not None and uses_transformer_engine(cfg),
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        mrope_section=m.mrope_section,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
        sequence_parallel=p.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=prec.params_dtype == "bf16",
        fp16=prec.params_dtype == "fp16",
        fp8=prec.fp8,
        fp8_recipe=prec.fp8_recipe,
        recompute_granularity=rc.granularity,
        recompute_method=rc.method,
        recompute_num_layers=rc.num_layers,
        # CPU initialisation draws the full weight from one generator and slices it, so a TP run
        # starts from exactly the weights of the single-process run.
        use_cpu_initialization=True,
        # Fusions that need apex or CUDA kernels stay off on CPU.
        gradient_accumulation_fusion=False,
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        apply_rope_fusion=False,
        persist_layer_norm=on_gpu,
        # Interleaved pipelines give wrong numbers with batched p2p on gloo.
        batch_p2p_comm=on_gpu,
        deallocate_pipeline_outputs=True,
        # Losses return (token sum, token count): megatron then normalises by the tokens of the
        # whole global batch (all micro-batches and data-parallel ranks), the GRPO/SFT convention.
        calculate_per_token_loss=True,
    )


def layer_spec(cfg: ModelSections) -> ModuleSpec:
    """TE's layers, or megatron's local ones with a core attention that takes packed (THD)
    sequences as TE's does: packed and padded batches run the same layers on both machines."""
    m = cfg.model
    if uses_transformer_engine(cfg):
        return get_gpt_layer_with_transformer_engine_spec(
            num_experts=m.num_moe_experts, moe_grouped_gemm=m.num_moe_experts is not None, qk_layernorm=m.qk_layernorm)
    spec = get_gpt_layer_local_spec(num_experts=m.num_moe_experts, qk_layernorm=m.qk_layernorm, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = PackedDotProductAttention
    return spec


def build_decoder(
    cfg: ModelSections,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
    config: TransformerConfig | None = None,
    scatter_embedding_sequence_parallel: bool = True,
) -> GPTModel:
    """One pipeline stage (or virtual stage) of the decoder.

    ``scatter_embedding_sequence_parallel=False`` keeps the embedding output whole under sequence
    parallelism, for callers that edit it (the omni model's placeholder scatter) and scatter it
    themselves.
    """
    m = cfg.model
    decoder = GPTModel(
        config=config or transformer_config(cfg),
        transformer_layer_spec=layer_spec(cfg),
        vocab_size=padded_vocab_size(m, cfg.parallel.tensor_model_parallel_size),
        max_sequence_length=m.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=m.tie_word_embeddings,
        position_embedding_type="mrope" if m.mrope_section else "rope",
        rotary_base=int(m.rotary_base),
        scatter_embedding_sequence_parallel=scatter_embedding_sequence_parallel,
        vp_stage=vp_stage,
    )
    take_uneven_token_counts(decoder)  # an expert group's data-parallel ranks hold different batches
    if m.mrope_interleaved:
        # megatron-core's MRoPE only knows contiguous sections: swap in the interleaved table.
        decoder.rotary_pos_emb = InterleavedMultimodalRotaryEmbedding(
            kv_channels=m.head_dim, rotary_percent=1.0, rotary_base=int(m.rotary_base))
    return decoder


def text_position_ids(tokens: torch.Tensor, mrope: bool) -> torch.Tensor:
    """Positions of plain text: [b, s] for 1-D RoPE, [3, b, s] (three equal rows) for MRoPE."""
    pos = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
    return pos.unsqueeze(0).expand(3, -1, -1).contiguous() if mrope else pos.contiguous()
