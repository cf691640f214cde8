"""The Qwen3-Omni MoE thinker (model.family: qwen3_omni_moe) against transformers' tiny random
Qwen3OmniMoeThinkerForConditionalGeneration: logits with video + audio + text (interleaved MRoPE,
DeepStack, experts), the router without renormalisation, the load-balancing loss, and the
configuration's errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from moe_helpers import load_megatron_state, make_hf_moe_thinker, megatron_state, moe_model_sections
from omni_helpers import assert_close_on_valid, hf_logits, make_batch
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

from megatron_omni.config import ConfigError
from megatron_omni.models.config import PrecisionConfig
from megatron_omni.models.decoder import padded_vocab_size
from megatron_omni.models.moe import router_metrics
from megatron_omni.models.omni import build_omni_model
from megatron_omni.models.omni_config import validate_omni
from megatron_omni.training.config import RunConfig


def run_config(model_cfg) -> RunConfig:
    return RunConfig(model=model_cfg, precision=PrecisionConfig(transformer_engine=False))


def built(hf_model, norm_topk_prob: bool = True, full_recompute: bool = False):
    model_cfg, omni = moe_model_sections(norm_topk_prob)
    cfg = run_config(model_cfg)
    if full_recompute:
        cfg.recompute.granularity, cfg.recompute.method, cfg.recompute.num_layers = "full", "uniform", 1
    model = build_omni_model(cfg, omni=omni, initialize=False)
    load_megatron_state(model, megatron_state(hf_model, padded_vocab_size(model_cfg, 1)))
    return model.eval(), cfg


@pytest.fixture(autouse=True)
def unset_aux_loss_scale():
    """These tests run backward outside megatron's schedules, where MoEAuxLossAutoScaler takes a 0-d
    scale of 1; the schedules later copy their [1] scale into it and fail (megatron-core 0.16). Leave
    it unset, as a process that only trains through the schedules has it."""
    yield
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    MoEAuxLossAutoScaler.main_loss_backward_scale = None


@pytest.fixture(scope="module")
def hf_thinker():
    return make_hf_moe_thinker(seed=0)


@pytest.mark.parametrize("use_audio_in_video", [False, True])
def test_logits_match_transformers(hf_thinker, megatron_world, use_audio_in_video):
    model, _ = built(hf_thinker)
    batch = make_batch(hf_thinker, use_audio_in_video)
    with torch.no_grad():
        actual = model(**batch.model_inputs())
    assert_close_on_valid(actual, hf_logits(hf_thinker, batch), batch, atol=1e-4)


def test_deepstack_and_interleaved_rope_take_part(hf_thinker, megatron_world):
    """The parity above would not hold without either: dropping DeepStack's additions, or taking
    megatron's block-sectioned MRoPE instead of the interleaved one, moves the logits."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding

    model, _ = built(hf_thinker)
    batch = make_batch(hf_thinker)
    expected = hf_logits(hf_thinker, batch)
    with torch.no_grad():
        for layer in model.language_model.decoder.layers:
            layer._forward_hooks.clear()  # DeepStack's hooks
        no_deepstack = model(**batch.model_inputs())
        model, _ = built(hf_thinker)
        model.language_model.rotary_pos_emb = MultimodalRotaryEmbedding(kv_channels=16, rotary_percent=1.0,
                                                                         rotary_base=1_000_000)
        blocked_rope = model(**batch.model_inputs())
    n = batch.lengths()[0]
    for wrong in (no_deepstack, blocked_rope):
        assert (wrong[0, :n, :128] - expected[0, :n]).abs().max() > 1e-2


def test_router_without_renormalisation_matches_transformers(megatron_world):
    hf_model = make_hf_moe_thinker(seed=1, norm_topk_prob=False)
    model, _ = built(hf_model, norm_topk_prob=False)
    batch = make_batch(hf_model)
    with torch.no_grad():
        actual = model(**batch.model_inputs())
    assert_close_on_valid(actual, hf_logits(hf_model, batch), batch, atol=1e-4)


def test_load_balancing_loss_is_transformers_formula_per_layer(hf_thinker, megatron_world):
    """A training forward with the padding masked: the logged loss is the mean over layers of
    transformers' load_balancing_loss_func on each layer's router logits (padding excluded), and
    its gradient reaches the router."""
    model, _ = built(hf_thinker)
    batch = make_batch(hf_thinker)
    with torch.no_grad():
        router_logits = hf_thinker(**batch.model_inputs(), attention_mask=batch.attention_mask,
                                   output_router_logits=True).router_logits
    expected = sum(
        float(load_balancing_loss_func((layer,), 4, 2, batch.attention_mask)) for layer in router_logits
    ) / len(router_logits)
    model.train()
    logits = model(**batch.model_inputs(), padding_mask=~batch.attention_mask.bool())
    logits[..., :128].logsumexp(-1)[batch.attention_mask.bool()].sum().backward()
    metrics = router_metrics(model.config, num_microbatches=1)
    assert metrics["moe_load_balancing_loss"] == pytest.approx(expected, rel=1e-5)
    assert router_metrics(model.config, num_microbatches=1)["moe_load_balancing_loss"] == 0.0  # cleared
    router = model.language_model.decoder.layers[0].mlp.router.weight
    assert router.grad is not None and router.grad.abs().max() > 0


def test_project_batches_keep_padding_out_of_the_load_balancing_loss(hf_thinker, megatron_world):
    """The data pipeline's own layouts of two samples of different lengths, through
    ``model_kwargs()`` as the training and scoring forwards call the model: the right-padded batch
    and the packed row ending in a padding segment log transformers' load-balancing loss with the
    attention mask (the packed row has the same real tokens, hence the same router logits). Without
    the mask the padded batch gives transformers' unmasked value, a different one (transformers given
    our padding positions, 1 where its Qwen3-Omni rope index puts 0; a causal pad row as ours)."""
    from omni_helpers import processed_samples

    from megatron_omni.data.batch import pack, pad

    model, _ = built(hf_thinker)
    helper = make_batch(hf_thinker)
    samples = processed_samples(helper)
    real = sum(s.length for s in samples)
    padded, packed = pad(samples), pack(samples, pad_to_multiple_of=real + 7)
    assert torch.equal(padded.padding_mask, ~helper.attention_mask.bool())
    assert packed.padding_mask.tolist() == [[False] * real + [True] * 7]
    assert pad(samples[:1]).padding_mask is None and pack(samples).padding_mask is None

    def transformers_loss(attention_mask) -> float:
        with torch.no_grad():
            inputs = {**helper.model_inputs(), "position_ids": padded.position_ids}
            router_logits = hf_thinker(**inputs, attention_mask=attention_mask, output_router_logits=True).router_logits
        per_layer = [float(load_balancing_loss_func((layer,), 4, 2, attention_mask)) for layer in router_logits]
        return sum(per_layer) / len(per_layer)

    def logged_loss(batch, **overrides) -> float:
        model(batch.tokens, batch.position_ids, None, **{**batch.model_kwargs(), **overrides})
        return router_metrics(model.config, num_microbatches=1)["moe_load_balancing_loss"]

    masked, unmasked = transformers_loss(helper.attention_mask), transformers_loss(None)
    assert abs(masked - unmasked) > 1e-3 * masked  # measured 3.4e-3: 6 of 92 positions are padding
    model.train()
    router_metrics(model.config, num_microbatches=1)  # clears what an earlier forward may have left
    assert logged_loss(padded) == pytest.approx(masked, rel=1e-5)
    assert logged_loss(packed) == pytest.approx(masked, rel=1e-5)
    assert logged_loss(padded, padding_mask=None) == pytest.approx(unmasked, rel=1e-5)


def test_family_rules_are_checked():
    model_cfg, omni = moe_model_sections()
    with pytest.raises(ConfigError, match="model.family=qwen3_omni_moe needs model.num_moe_experts"):
        dataclasses.replace(model_cfg, num_moe_experts=None).validate("model")
    with pytest.raises(ConfigError, match="model.num_moe_experts is set but model.family is qwen2_5_omni"):
        dataclasses.replace(model_cfg, family="qwen2_5_omni").validate("model")
    with pytest.raises(ConfigError, match="model.moe_router_topk \\(5\\) must lie in 1..model.num_moe_experts"):
        dataclasses.replace(model_cfg, moe_router_topk=5).validate("model")
    with pytest.raises(ConfigError, match="omni.vision.deepstack_visual_indexes must be set for model.family"):
        no_deepstack = dataclasses.replace(omni.vision, deepstack_visual_indexes=None)
        validate_omni(model_cfg, dataclasses.replace(omni, vision=no_deepstack))
    dense = dataclasses.replace(model_cfg, family="qwen2_5_omni", **dict.fromkeys(
        ("num_moe_experts", "moe_ffn_hidden_size", "moe_router_topk", "moe_norm_topk_prob", "moe_aux_loss_coeff")))
    with pytest.raises(ConfigError, match="omni.vision.num_position_embeddings applies to model.family=qwen3_omni_moe only"):
        validate_omni(dense, omni)


def test_deepstack_layers_must_sit_in_the_first_pipeline_stage():
    model_cfg, omni = moe_model_sections()
    cfg = run_config(model_cfg)
    cfg.parallel.pipeline_model_parallel_size = 4
    with pytest.raises(ConfigError, match="feed decoder layers 0..1, but the first pipeline chunk holds 1 layers"):
        build_omni_model(cfg, omni=omni)
    cfg.parallel.pipeline_model_parallel_size = 2
    cfg.recompute.granularity, cfg.recompute.method, cfg.recompute.num_layers = "full", "uniform", 1
    with pytest.raises(ConfigError, match="recompute.granularity=full with DeepStack .* needs parallel.pipeline"):
        build_omni_model(cfg, omni=omni)


def test_full_recompute_gives_the_gradients_of_no_recompute(hf_thinker, megatron_world):
    """Recomputed DeepStack layers take the forward's additions again, and their gradients reach
    the vision tower once (PP=1)."""
    batch = make_batch(hf_thinker)
    grads = []
    for full_recompute in (False, True):
        model, _ = built(hf_thinker, full_recompute=full_recompute)
        model.train()
        logits = model(**batch.model_inputs())
        logits[..., :128].logsumexp(-1)[batch.attention_mask.bool()].sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
        # With recompute, both additions' gradients came from the layers' second run.
        assert all((g is not None) == full_recompute for g in model._deepstack.grads)
    router_metrics(model.config, num_microbatches=1)  # clears megatron's tracker
    assert grads[0].keys() == grads[1].keys() and "visual.merger_list.0.mlp.0.weight" in grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_expert_layouts_are_checked():
    model_cfg, _ = moe_model_sections()
    cfg = run_config(model_cfg)
    cfg.parallel.expert_model_parallel_size = 3
    with pytest.raises(ConfigError, match=r"expert_model_parallel_size \(3\) must divide model.num_moe_experts \(4\)"):
        cfg.validate()
    cfg.parallel.expert_model_parallel_size = 2
    with pytest.raises(ConfigError, match=r"world size 3 is not divisible by TP \(1\) x PP \(1\) x parallel.expert_model"):
        cfg.validate(world_size=3)
    cfg.validate(world_size=2)
    cfg.parallel.tensor_model_parallel_size = 2
    with pytest.raises(ConfigError, match="with a MoE decoder needs parallel.sequence_parallel"):
        cfg.validate()
    dense = RunConfig()
    dense.parallel.expert_model_parallel_size = 2
    with pytest.raises(ConfigError, match="expert_model_parallel_size \\(2\\) needs a MoE decoder"):
        dense.validate()


def test_rollout_engine_continues_as_transformers_greedy(hf_thinker, megatron_world):
    """The rollout engine (its own KV cache in megatron's attention, the experts as they are) on a
    video + audio prompt: greedy tokens equal transformers' argmax over prompt + completion."""
    from omni_helpers import AUDIO, IMAGE, VIDEO, processed_samples

    from megatron_omni.generation.omni import sample_prompts
    from megatron_omni.generation.sampling import SamplingConfig

    model, _ = built(hf_thinker)
    batch = make_batch(hf_thinker)
    prompt = dataclasses.replace(processed_samples(batch)[0], prompt_length=batch.lengths()[0])
    n = prompt.length
    sampling = SamplingConfig(max_new_tokens=3, greedy=True)
    ((completion,),) = sample_prompts(model, [prompt], sampling, 1, [0], vocab_size=128, pad_token_id=0).completions
    full = torch.cat([prompt.input_ids, torch.tensor(completion)])[None]
    start = int(prompt.position_ids.max()) + 1
    positions = torch.cat([prompt.position_ids, torch.arange(start, start + 3).expand(3, -1)], 1)[:, None]
    frames = prompt.media.audio_features.shape[-1]
    with torch.no_grad():
        logits = hf_thinker(input_ids=full, position_ids=positions, pixel_values_videos=prompt.media.video.pixel_values,
                            video_grid_thw=batch.video_grid_thw[:1], input_features=prompt.media.audio_features[None],
                            feature_attention_mask=torch.ones(1, frames, dtype=torch.long)).logits[0]
    logits[:, [AUDIO, IMAGE, VIDEO]] = float("-inf")  # the sampler never emits placeholders
    assert logits[n - 1 : n + 2].argmax(-1).tolist() == completion
