"""The language decoder's sections of a run config (``model``, ``precision``) and what the model
builders read of a run's config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from megatron_omni.config import ConfigError
from megatron_omni.parallel.config import ParallelConfig


def transformer_engine_available() -> bool:
    """TE imports and CUDA is present. A broken TE raises RuntimeError/OSError, not ImportError."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True


ModelFamily = Literal["qwen2_5_omni", "qwen3_omni_moe"]
MOE_FIELDS = ("num_moe_experts", "moe_ffn_hidden_size", "moe_router_topk", "moe_norm_topk_prob", "moe_aux_loss_coeff")


@dataclass
class ModelConfig:
    """The language decoder (the defaults are a tiny Qwen2.5 model for CPU runs).

    ``family`` picks the architecture: ``qwen2_5_omni`` (dense SwiGLU MLP, Qwen2.5-Omni's towers) or
    ``qwen3_omni_moe`` (the ``moe_*`` experts in every layer, Qwen3-Omni's towers with DeepStack).
    """

    family: ModelFamily = "qwen2_5_omni"

    vocab_size: int = 512
    hidden_size: int = 64
    ffn_hidden_size: int = 128
    num_layers: int = 4
    num_attention_heads: int = 4
    num_query_groups: int = 2
    rotary_base: float = 1_000_000.0
    # 3-D multimodal RoPE (temporal, height, width) sections of head_dim / 2; null means 1-D RoPE.
    mrope_section: list[int] | None = field(default_factory=lambda: [2, 3, 3])
    tie_word_embeddings: bool = True
    add_qkv_bias: bool = True
    norm_epsilon: float = 1e-6
    max_position_embeddings: int = 4096
    # Vocabulary rows are padded to a multiple of this times TP, as megatron does.
    make_vocab_size_divisible_by: int = 128
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    # Width of one attention head; null means hidden_size / num_attention_heads (Qwen3-Omni-30B-A3B
    # has 128 with hidden 2048 and 32 heads).
    kv_channels: int | None = None
    # RMSNorm over each query and key head before RoPE (Qwen3's q_norm / k_norm).
    qk_layernorm: bool = False
    # MRoPE channels assigned t, h, w, t, h, w, ... (Qwen3-Omni) instead of three blocks (Qwen2.5).
    mrope_interleaved: bool = False
    # The experts of the qwen3_omni_moe family (all null for the dense qwen2_5_omni; HF text-config
    # names: num_experts, moe_intermediate_size, num_experts_per_tok, norm_topk_prob,
    # router_aux_loss_coef).
    num_moe_experts: int | None = None
    moe_ffn_hidden_size: int | None = None
    moe_router_topk: int | None = None
    # Softmax over all experts, top-k, then the k weights renormalised to sum to 1; false keeps the
    # softmax probabilities of the k experts as they are.
    moe_norm_topk_prob: bool | None = None
    # Weight of the load-balancing loss (transformers' formula per layer, averaged over layers).
    moe_aux_loss_coeff: float | None = None

    @property
    def head_dim(self) -> int:
        return self.kv_channels if self.kv_channels is not None else self.hidden_size // self.num_attention_heads

    def validate(self, key: str) -> None:
        moe = {name: getattr(self, name) for name in MOE_FIELDS}
        if self.family == "qwen3_omni_moe":
            missing = [name for name, value in moe.items() if value is None]
            if missing:
                raise ConfigError(f"{key}.family=qwen3_omni_moe needs {', '.join(f'{key}.{n}' for n in missing)}")
            if self.num_moe_experts < 1 or self.moe_ffn_hidden_size < 1 or self.moe_aux_loss_coeff < 0:
                raise ConfigError(f"{key}.num_moe_experts ({self.num_moe_experts}) and {key}.moe_ffn_hidden_size "
                                  f"({self.moe_ffn_hidden_size}) must be >= 1, {key}.moe_aux_loss_coeff "
                                  f"({self.moe_aux_loss_coeff}) >= 0")
            if not 1 <= self.moe_router_topk <= self.num_moe_experts:
                raise ConfigError(f"{key}.moe_router_topk ({self.moe_router_topk}) must lie in "
                                  f"1..{key}.num_moe_experts ({self.num_moe_experts})")
            if self.mrope_section is None:
                raise ConfigError(f"{key}.family=qwen3_omni_moe needs {key}.mrope_section (3-D multimodal RoPE)")
        else:
            given = [name for name, value in moe.items() if value is not None]
            if given:
                raise ConfigError(f"{key}.{given[0]} is set but {key}.family is {self.family} (a dense decoder): "
                                  f"set {key}.family=qwen3_omni_moe or drop the {key}.moe_* keys")
        if self.mrope_interleaved and self.mrope_section is None:
            raise ConfigError(f"{key}.mrope_interleaved needs {key}.mrope_section")
        if self.kv_channels is not None and self.kv_channels < 1:
            raise ConfigError(f"{key}.kv_channels must be >= 1, got {self.kv_channels}")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{key}.hidden_size ({self.hidden_size}) must be divisible by "
                              f"{key}.num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(f"{key}.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                              f"{key}.num_query_groups ({self.num_query_groups})")
        if self.mrope_section is not None and sum(self.mrope_section) * 2 != self.head_dim:
            raise ConfigError(f"{key}.mrope_section {self.mrope_section} must sum to head_dim / 2 = {self.head_dim // 2}")
        for name in ("vocab_size", "num_layers", "make_vocab_size_divisible_by", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PrecisionConfig:
    params_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # "e4m3" or "hybrid" (E4M3 forward, E5M2 backward); needs Transformer Engine on CUDA.
    fp8: Literal["e4m3", "hybrid"] | None = None
    fp8_recipe: Literal["delayed", "tensorwise"] = "delayed"
    # Build layers from the Transformer Engine spec when it is importable and CUDA is present.
    transformer_engine: bool = True

    def validate(self, key: str) -> None:
        if self.fp8 is not None and not transformer_engine_available():
            raise ConfigError(
                f"{key}.fp8={self.fp8!r} needs Transformer Engine on a CUDA machine "
                f"(pip install --no-build-isolation -r requirements-gpu.txt); set {key}.fp8=null on CPU"
            )


@dataclass
class RecomputeConfig:
    """Activation recompute: megatron's for the decoder, per-block checkpoints for the towers.

    ``granularity: full`` keeps only each recompute unit's input and runs its layers again in the
    backward; ``method: uniform`` makes every ``num_layers`` consecutive layers of a stage (or
    virtual stage) one unit, ``method: block`` recomputes the first ``num_layers`` layers of each
    stage one at a time and keeps the rest. ``granularity: selective`` recomputes only the core
    attention (softmax(QK^T)V, megatron's default module), so the s x s scores are not kept.
    """

    granularity: Literal["full", "selective"] | None = None
    method: Literal["uniform", "block"] | None = None
    num_layers: int | None = None
    # Checkpoint every block of the vision and audio towers (torch.utils.checkpoint through
    # transformers' gradient checkpointing); frozen towers keep no activations either way.
    towers: bool = False

    def validate(self, key: str) -> None:
        if self.granularity == "full":
            if self.method is None or self.num_layers is None:
                raise ConfigError(f"{key}.granularity=full needs {key}.method (uniform or block) and {key}.num_layers")
            if self.num_layers < 1:
                raise ConfigError(f"{key}.num_layers must be >= 1, got {self.num_layers}")
        elif self.method is not None or self.num_layers is not None:
            raise ConfigError(f"{key}.method and {key}.num_layers apply to {key}.granularity=full only "
                              f"(granularity is {self.granularity!r}): set them to null")


def check_recompute(recompute: RecomputeConfig, layers_per_chunk: int, key: str = "recompute") -> None:
    """The rules between ``recompute`` and the layout: a uniform unit must tile a stage's (or
    virtual stage's) layers, a block count must not exceed them."""
    if recompute.granularity != "full":
        return
    n = recompute.num_layers
    if recompute.method == "uniform" and layers_per_chunk % n:
        raise ConfigError(f"{key}.num_layers ({n}) must divide the {layers_per_chunk} decoder layers of each pipeline "
                          f"stage (model.num_layers / (PP x VPP)) for {key}.method=uniform")
    if recompute.method == "block" and n > layers_per_chunk:
        raise ConfigError(f"{key}.num_layers ({n}) exceeds the {layers_per_chunk} decoder layers of each pipeline "
                          f"stage (model.num_layers / (PP x VPP)) for {key}.method=block")


class ModelSections(Protocol):
    """What the model builders read of a run's config (any run config has these sections)."""

    model: ModelConfig
    parallel: ParallelConfig
    precision: PrecisionConfig
    recompute: RecomputeConfig
