"""The omni thinker on megatron-core: towers + placeholder scatter + GPTModel decoder, for the
Qwen2.5-Omni (dense) and Qwen3-Omni MoE families (``model.family``).

    model = build_omni_model(cfg, pre_process, post_process, vp_stage, omni=omni_cfg)
    out = model(input_ids, position_ids,                      # position_ids: [3, b, s] TMRoPE
                pixel_values=..., image_grid_thw=...,         # optional
                pixel_values_videos=..., video_grid_thw=...,  # optional
                input_features=..., feature_attention_mask=..., labels=...)

On the first pipeline stage the text embeddings come from the decoder's own vocab-parallel
embedding ([s, b, h], replicated over TP ranks); the image, video and audio tokens produced by
the towers overwrite the placeholder positions; the result enters the decoder as ``decoder_input``.
Later stages receive hidden states through ``set_input_tensor`` as with any GPTModel.

DeepStack (Qwen3-Omni): the vision tower also returns the merged outputs of a few of its blocks;
the j-th is added to the hidden states at the image and video positions after decoder layer j, as
transformers' ``Qwen3OmniMoeThinkerTextModel`` does. Those layers sit in the first pipeline chunk
(checked at build), beside the towers; a forward hook on each adds the forward's additions.

Checkpointing needs no override: MegatronModule's default ``sharded_state_dict`` takes the
decoder's own sharded state dict and stores the towers as replicated tensors (replica id
(0, tp_rank, dp_rank)), so a checkpoint saved at one TP/PP layout loads at another.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import torch
from megatron.core import tensor_parallel
from megatron.core.inference.contexts import BaseInferenceContext
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule

from megatron_omni.config import ConfigError
from megatron_omni.models.config import ModelSections
from megatron_omni.models.decoder import build_decoder, transformer_config
from megatron_omni.models.encoders import (
    build_audio_encoder,
    build_vision_encoder,
    checkpoint_blocks,
    encode_audio,
    encode_vision,
    fp32_buffers,
    restore_buffers,
)
from megatron_omni.models.masking import ModalityMask, mask_features
from megatron_omni.models.omni_config import OmniConfig, validate_omni
from megatron_omni.models.placeholders import PlaceholderMismatch, placeholder_count, scatter_placeholders
from megatron_omni.models.vocab_padding import padded_vocab_hook


class _DeepStack:
    """One forward's DeepStack additions, and the gradients their recomputed layers found.

    Under a full recompute megatron runs the decoder layers without autograd and again inside the
    backward, with the recompute unit's inputs only: an addition taken into that second run would
    pull the backward into the vision tower's graph once per layer. There it enters as a leaf of its
    own; its gradient is kept here and handed to the addition by ``_RecomputedDeepStackGrads``, an
    identity on the decoder input whose backward runs after every decoder layer's."""

    def __init__(self, additions: list[torch.Tensor]):
        self.additions = additions
        self.grads: list[torch.Tensor | None] = [None] * len(additions)

    def addition(self, level: int) -> torch.Tensor:
        # A backward in progress with autograd on: megatron's recompute of this layer.
        if not (torch.is_grad_enabled() and torch._C._current_graph_task_id() != -1):
            return self.additions[level]
        leaf = self.additions[level].detach().requires_grad_()
        leaf.register_hook(partial(self._keep, level))
        return leaf

    def _keep(self, level: int, grad: torch.Tensor) -> None:
        self.grads[level] = grad if self.grads[level] is None else self.grads[level] + grad


class _RecomputedDeepStackGrads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, decoder_input, deepstack: _DeepStack, *additions):
        ctx.deepstack = deepstack
        return decoder_input.view_as(decoder_input)

    @staticmethod
    def backward(ctx, grad):
        return (grad, None, *ctx.deepstack.grads)


class OmniModel(MegatronModule):
    """One pipeline stage (or virtual stage) of the omni thinker.

    Forward returns, like GPTModel: the per-token loss [b, s] when ``labels`` are given on the
    last stage, else vocab-parallel logits [b, s, V_padded / TP], or the hidden state [s, b, h]
    on other stages. Padded vocabulary columns are masked (see ``vocab_padding``), so the loss
    and any softmax of the logits equal those over the true vocabulary.
    """

    def __init__(
        self,
        config: TransformerConfig,
        omni: OmniConfig,
        language_model: GPTModel,
        vocab_size: int,
        initialize: bool = True,
        family: str = "qwen2_5_omni",
    ):
        super().__init__(config=config)
        self._tower_fp32_buffers: dict[str, dict[str, torch.Tensor]] = {}
        self.omni = omni
        self.language_model = language_model
        self.vocab_size = vocab_size
        self.pre_process = language_model.pre_process
        self.post_process = language_model.post_process
        self.share_embeddings_and_output_weights = language_model.share_embeddings_and_output_weights
        self.model_type = ModelType.encoder_or_decoder
        self.visual = None
        self.audio_tower = None
        # The last forward's DeepStack additions [s, b, h] (sequence-parallel shards under SP), one
        # per decoder layer 0, 1, ...; None without images and videos. Kept after the forward: a
        # full recompute runs those layers again in the micro-batch's backward (PP=1).
        self._deepstack: _DeepStack | None = None
        if self.post_process and language_model.vocab_size != vocab_size:
            language_model.output_layer.register_forward_hook(padded_vocab_hook(vocab_size))
        if self.pre_process:
            attn = omni.encoder_attn_implementation
            self.visual = build_vision_encoder(omni.vision, config.params_dtype, attn, initialize, family)
            self.audio_tower = build_audio_encoder(omni.audio, config.params_dtype, attn, initialize, family)
            self.visual.requires_grad_(not omni.freeze_vision)
            self.audio_tower.requires_grad_(not omni.freeze_audio)
            if family == "qwen2_5_omni":
                # Part of Qwen2.5-Omni's released weights but unused by the thinker's forward: kept
                # frozen so weight decay cannot drift it.
                self.audio_tower.audio_bos_eos_token.requires_grad_(False)
            for layer in language_model.decoder.layers:
                level = layer.layer_number - 1
                if level < len(omni.vision.deepstack_visual_indexes or []):
                    layer.register_forward_hook(partial(self._add_deepstack, level))
            self._tower_fp32_buffers = {"visual": fp32_buffers(self.visual), "audio_tower": fp32_buffers(self.audio_tower)}

    # ------------------------------------------------------------------ megatron plumbing

    @property
    def decoder(self):
        """The transformer block, where megatron's schedules look for per-micro-batch state."""
        return self.language_model.decoder

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self) -> torch.Tensor | None:
        """Tied embedding weight, for megatron's embedding-gradient all-reduce across stages."""
        return self.language_model.shared_embedding_or_output_weight()

    def _apply(self, fn, recurse=True):
        # Float16Module calls .bfloat16() on the whole model; the towers' rotary frequencies
        # must stay fp32 (as in transformers' bf16 models) or vision positions lose precision.
        super()._apply(fn, recurse)
        for name, saved in self._tower_fp32_buffers.items():
            restore_buffers(getattr(self, name), saved)
        return self

    def _add_deepstack(self, level: int, module, args, output):
        if self._deepstack is None:
            return output
        hidden, context = output
        return hidden + self._deepstack.addition(level).to(hidden.dtype), context

    # ------------------------------------------------------------------ forward

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        modality_mask: ModalityMask | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Text embeddings with image, video and audio tokens scattered in: [s, b, h] (first stage),
        and the DeepStack additions (one [s, b, h] per early decoder layer, zero off the image and
        video positions; None without images and videos or for Qwen2.5-Omni).

        A "visual" modality mask degrades images and videos alike: both are what the model sees."""
        tokens = self.omni.tokens
        embeddings = self.language_model.embedding(input_ids=input_ids, position_ids=None)
        deepstack = None
        for token_id, what, pixels, grid in (
            (tokens.image, "image", pixel_values, image_grid_thw),
            (tokens.video, "video", pixel_values_videos, video_grid_thw),
        ):
            if pixels is not None:
                features = encode_vision(self.visual, mask_features(pixels, modality_mask, "visual"), grid)
                embeddings = scatter_placeholders(embeddings, input_ids, token_id, features.tokens, what)
                if features.deepstack:
                    deepstack = deepstack or [torch.zeros_like(embeddings) for _ in features.deepstack]
                    deepstack = [scatter_placeholders(level, input_ids, token_id, extra, what)
                                 for level, extra in zip(deepstack, features.deepstack)]
        if input_features is not None:
            mel = mask_features(input_features, modality_mask, "audio")
            audio = encode_audio(self.audio_tower, mel, feature_attention_mask)
            embeddings = scatter_placeholders(embeddings, input_ids, tokens.audio, audio, "audio")
        for token_id, what, given in (
            (tokens.image, "image", pixel_values is not None),
            (tokens.video, "video", pixel_values_videos is not None),
            (tokens.audio, "audio", input_features is not None),
        ):
            count = 0 if given else placeholder_count(input_ids, token_id)
            if count:
                raise PlaceholderMismatch(
                    f"input_ids hold {count} {what} placeholder tokens (id {token_id}) but no {what} inputs were given"
                )
        if self.config.sequence_parallel:
            embeddings = tensor_parallel.scatter_to_sequence_parallel_region(embeddings)
            if deepstack is not None:
                deepstack = [tensor_parallel.scatter_to_sequence_parallel_region(level) for level in deepstack]
        return embeddings, deepstack

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        modality_mask: ModalityMask | None = None,
        packed_seq_params: PackedSeqParams | None = None,
        inference_context: BaseInferenceContext | None = None,
        runtime_gather_output: bool | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``inference_context`` (megatron's KV cache) and ``runtime_gather_output`` (full-vocab
        logits on every TP rank) pass through to GPTModel for generation: the prefill step
        carries the media, decode steps only their new text tokens. ``padding_mask`` [b, s]
        (True at padding) keeps padded positions out of the MoE layers' load-balancing loss (they
        are still routed; nothing reads their outputs); dense layers ignore it."""
        if position_ids.dim() != 3 or position_ids.shape[0] != 3:
            raise ValueError(
                f"position_ids must be [3, batch, seq] (TMRoPE temporal/height/width rows), got {tuple(position_ids.shape)}"
            )
        decoder_input = None
        if self.pre_process:
            decoder_input, deepstack = self.embed(
                input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw,
                input_features, feature_attention_mask, modality_mask,
            )
            self._deepstack = None if deepstack is None else _DeepStack(deepstack)
            if self._deepstack is not None and self.config.recompute_granularity == "full" and torch.is_grad_enabled():
                decoder_input = _RecomputedDeepStackGrads.apply(decoder_input, self._deepstack, *deepstack)
        if padding_mask is not None and self.config.sequence_parallel:
            # GPTModel splits the mask over the sequence-parallel ranks only when it embeds the tokens
            # itself; it gets the decoder input here (first stage) or none (later stages), so every
            # stage gives its MoE layers this rank's [b, s / TP] chunk, as GPTModel would.
            padding_mask = tensor_parallel.scatter_to_sequence_parallel_region(padding_mask.t().contiguous()).t()
        return self.language_model(
            input_ids,
            position_ids,
            attention_mask,
            decoder_input=decoder_input,
            labels=labels,
            packed_seq_params=packed_seq_params,
            inference_context=inference_context,
            runtime_gather_output=runtime_gather_output,
            padding_mask=padding_mask,
        )


def build_omni_model(
    cfg: ModelSections,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
    omni: OmniConfig | None = None,
    initialize: bool = True,
) -> OmniModel:
    """A ``build_model_chunks`` builder: ``partial(build_omni_model, omni=omni_cfg)``.

    ``omni`` defaults to ``cfg.omni`` (a run config of an omni run). ``initialize=False`` skips random initialisation (the
    weights are about to be loaded), which saves minutes on a 7B model.
    """
    omni = omni if omni is not None else cfg.omni
    validate_omni(cfg.model, omni)
    check_deepstack_layout(cfg, omni)
    config = transformer_config(cfg)
    if not initialize:
        config = dataclasses.replace(config, perform_initialization=False)
    # The placeholder scatter needs the whole sequence: the scatter into sequence-parallel
    # chunks happens after it, in OmniModel.embed.
    language_model = build_decoder(
        cfg, pre_process, post_process, vp_stage, config=config, scatter_embedding_sequence_parallel=False
    )
    model = OmniModel(config, omni, language_model, cfg.model.vocab_size, initialize, cfg.model.family)
    if cfg.recompute.towers and model.pre_process:
        checkpoint_blocks(model.visual)
        checkpoint_blocks(model.audio_tower)
    return model


def check_deepstack_layout(cfg: ModelSections, omni: OmniConfig) -> None:
    """DeepStack's layers must sit in the first pipeline chunk (with the towers that feed them). A
    full recompute runs them again in the backward with the last forward's additions: right at
    PP=1, where each micro-batch's backward follows its forward, not under a pipeline schedule."""
    levels = len(omni.vision.deepstack_visual_indexes or [])
    if not levels:
        return
    p = cfg.parallel
    first_chunk = cfg.model.num_layers // (p.pipeline_model_parallel_size * (p.virtual_pipeline_model_parallel_size or 1))
    if levels > first_chunk:
        raise ConfigError(
            f"omni.vision.deepstack_visual_indexes feed decoder layers 0..{levels - 1}, but the first pipeline chunk "
            f"holds {first_chunk} layers (model.num_layers / (PP x VPP)): use fewer pipeline stages")
    if cfg.recompute.granularity == "full" and p.pipeline_model_parallel_size > 1:
        raise ConfigError("recompute.granularity=full with DeepStack (model.family=qwen3_omni_moe) needs "
                          "parallel.pipeline_model_parallel_size=1: use recompute.granularity=selective with pipelines")
