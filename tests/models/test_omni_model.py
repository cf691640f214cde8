"""OmniModel behaviour beyond logit parity: modality masking, placeholder checks, freezing,
dtype handling, checkpoint sharding and vocabulary padding."""
from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from omni_helpers import AUDIO, VIDEO, make_batch

from megatron_omni.convert import read_model_config
from megatron_omni.models.masking import ModalityMask, mask_features
from megatron_omni.models.omni import build_omni_model
from megatron_omni.models.placeholders import PlaceholderMismatch


@pytest.fixture
def batch(converted_thinker):
    return make_batch(converted_thinker.hf_model, use_audio_in_video=False)


def forward(model, batch, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**{**batch.model_inputs(), **kwargs})


# ----------------------------------------------------------------------------- modality masking


def test_zero_ratio_mask_equals_the_full_forward(omni_model, batch):
    full = forward(omni_model, batch)
    for modality in ("visual", "audio"):
        assert torch.equal(forward(omni_model, batch, modality_mask=ModalityMask(modality, ratio=0.0)), full)


@pytest.mark.parametrize("modality, token", [("visual", VIDEO), ("audio", AUDIO)])
def test_mask_changes_logits_only_where_the_modality_is_visible(omni_model, batch, modality, token):
    full = forward(omni_model, batch)
    masked = forward(omni_model, batch, modality_mask=ModalityMask(modality, ratio=0.9, seed=3))
    assert masked.shape == full.shape  # positions and placeholder counts unchanged
    for i, length in enumerate(batch.lengths()):
        first = int((batch.input_ids[i] == token).nonzero()[0])
        # Causal attention: tokens before the first placeholder cannot see the modality.
        assert torch.equal(masked[i, :first], full[i, :first])
        changed = (masked[i, first:length] - full[i, first:length]).abs().amax(-1)
        assert bool((changed > 1e-6).all()), changed


def test_mask_is_seeded_and_leaves_the_global_rng_alone():
    features = torch.ones(200, 1000)
    before = torch.get_rng_state()
    first = mask_features(features, ModalityMask("visual", ratio=0.9, seed=7), "visual")
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(mask_features(features, ModalityMask("visual", ratio=0.9, seed=7), "visual"), first)
    assert not torch.equal(mask_features(features, ModalityMask("visual", ratio=0.9, seed=8), "visual"), first)
    assert abs((first == 0).float().mean().item() - 0.9) < 0.005
    assert mask_features(features, ModalityMask("audio", ratio=0.9), "visual") is features


@pytest.mark.parametrize("kwargs", [dict(modality="text"), dict(modality="visual", ratio=1.5)])
def test_mask_options_are_checked(kwargs):
    with pytest.raises(ValueError, match="ModalityMask"):
        ModalityMask(**kwargs)


def test_kv_cache_decoding_matches_the_full_forward(omni_model, batch):
    """Prefill with the media through megatron's static KV cache, then one text token."""
    from megatron.core.inference.contexts import StaticInferenceContext

    n = batch.lengths()[0]
    prompt = dict(
        input_ids=batch.input_ids[:1, :n], position_ids=batch.position_ids[:, :1, :n],
        pixel_values_videos=batch.pixel_values_videos[: int(batch.video_grid_thw[0].prod())],
        video_grid_thw=batch.video_grid_thw[:1], input_features=batch.input_features[:1],
        feature_attention_mask=batch.feature_attention_mask[:1],
    )
    ctx = StaticInferenceContext(max_batch_size=1, max_sequence_length=n + 1)
    with torch.no_grad():
        prefill = omni_model(**prompt, inference_context=ctx, runtime_gather_output=True)
        ctx.increment_sequence_len_offset(n)
        token = prefill[:, -1:].argmax(-1)
        # megatron's static KV cache slices the rotary table of the whole sequence so far.
        positions = torch.cat([prompt["position_ids"], torch.full((3, 1, 1), int(prompt["position_ids"].max()) + 1)], 2)
        step = omni_model(input_ids=token, position_ids=positions, inference_context=ctx, runtime_gather_output=True)
        full = omni_model(**{**prompt, "input_ids": torch.cat([prompt["input_ids"], token], 1), "position_ids": positions})
    # The static context keeps only the last position's logits.
    torch.testing.assert_close(prefill[:, -1], full[:, n - 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- input checks


def test_placeholder_count_must_match_the_encoder_output(omni_model, batch):
    ids = batch.input_ids.clone()
    ids[0, int((ids[0] == VIDEO).nonzero()[0])] = 5
    mismatch = r"input_ids hold 15 video placeholder tokens \(id 102\) but the video encoder produced 16"
    with pytest.raises(PlaceholderMismatch, match=mismatch):
        forward(omni_model, batch, input_ids=ids)


def test_placeholders_without_inputs_are_refused(omni_model, batch):
    with pytest.raises(PlaceholderMismatch, match="hold 90 audio placeholder tokens .* but no audio inputs"):
        forward(omni_model, batch, input_features=None)


def test_position_ids_must_be_three_rows(omni_model, batch):
    with pytest.raises(ValueError, match=r"position_ids must be \[3, batch, seq\]"):
        forward(omni_model, batch, position_ids=batch.position_ids[0])


# ----------------------------------------------------------------------------- model set-up


@pytest.fixture
def spec(converted_thinker):
    return read_model_config(converted_thinker.megatron_dir)


def test_frozen_tower_gets_no_gradient(spec, batch, megatron_world):
    omni = dataclasses.replace(spec.omni, freeze_vision=True)
    model = build_omni_model(spec.to_config(), omni=omni)
    labels = batch.input_ids.roll(-1, dims=1)
    model(**batch.model_inputs(), labels=labels).mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.visual.parameters())
    assert all(p.grad is not None for p in model.audio_tower.parameters() if p.requires_grad)
    assert model.language_model.embedding.word_embeddings.weight.grad is not None


def test_bf16_cast_keeps_rotary_frequencies_fp32(spec, megatron_world):
    model = build_omni_model(spec.to_config(), omni=spec.omni).bfloat16()
    assert model.visual.blocks[0].attn.q.weight.dtype == torch.bfloat16
    assert model.visual.rotary_pos_emb.inv_freq.dtype == torch.float32
    assert model.audio_tower.positional_embedding.positional_embedding.dtype == torch.float32


def test_towers_are_replicated_in_the_sharded_state_dict(omni_model):
    sharded = omni_model.sharded_state_dict()
    params = {k for k in omni_model.state_dict() if not k.endswith("_extra_state")}
    assert params <= set(sharded)
    tower_q = sharded["visual.blocks.0.attn.q.weight"]
    assert tower_q.key == "visual.blocks.0.attn.q.weight" and tower_q.replica_id == (0, 0, 0)
    assert tower_q.global_shape == tower_q.local_shape == (32, 32)
    qkv = sharded["language_model.decoder.layers.0.self_attention.linear_qkv.weight"]
    assert qkv.key.startswith("language_model.decoder.layers")


def test_padded_vocabulary_is_kept_out_of_the_softmax(spec, batch, megatron_world):
    """vocab 120 -> 128 rows: padded columns carry the lowest value; the loss is the CE over the
    true vocabulary, and backward runs through the masked logits."""
    spec.model.vocab_size = 120
    model = build_omni_model(spec.to_config(), omni=spec.omni)
    labels = batch.input_ids.roll(-1, dims=1)
    logits = forward(model, batch)
    assert logits.shape[-1] == 128
    assert bool((logits[..., 120:] == torch.finfo(logits.dtype).min).all())
    loss = model(**batch.model_inputs(), labels=labels)
    expected = F.cross_entropy(logits[..., :120].reshape(-1, 120), labels.reshape(-1), reduction="none").view_as(labels)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    loss.mean().backward()
    assert model.language_model.output_layer.weight.grad[120:].abs().max() == 0


def test_one_training_step_through_megatron_ddp_and_optimizer(spec, batch, megatron_world):
    """build_model_chunks (DDP), the pipeline schedule and megatron's Adam update the decoder and
    the trainable tower, and leave the frozen tower alone."""
    from megatron_omni.algorithms.lm import masked_token_sum
    from megatron_omni.training.model_setup import build_model_chunks, unwrap
    from megatron_omni.training.optimizer import build_optimizer
    from megatron_omni.training.step import optimizer_step

    cfg = spec.to_config()
    cfg.optimizer.lr = 1e-2
    chunks = build_model_chunks(cfg, partial(build_omni_model, omni=dataclasses.replace(spec.omni, freeze_vision=True)))
    optimizer, scheduler = build_optimizer(cfg, chunks)
    model = unwrap(chunks[0])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    labels = batch.input_ids.roll(-1, dims=1)

    def forward_step(microbatch, chunk):
        loss = chunk(**microbatch.model_inputs(), labels=labels)
        return loss, partial(masked_token_sum, loss_mask=microbatch.attention_mask)

    metrics = optimizer_step(chunks, optimizer, scheduler, [batch], forward_step,
                             batch.input_ids.shape[1], batch.input_ids.shape[0])
    assert torch.isfinite(torch.tensor(metrics["lm_loss"])) and metrics["skipped"] == 0
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert "audio_tower.layers.0.fc1.weight" in moved
    assert "language_model.decoder.layers.0.self_attention.linear_qkv.weight" in moved
    assert not [name for name in moved if name.startswith("visual.")]
