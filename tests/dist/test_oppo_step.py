"""One OPPO step (rollouts, rewards, reference and masked scoring forwards, GRPO + perception
loss) at TP=2 and at PP=2 against the single-process step, and the same for a step of two
mini-batches (two optimizer steps, the second one's ratios clipped); a run of two mini-batches
per rollout batch stopped and resumed at PP=2 against the straight run; what the scoring
forwards keep (evidence rows, completion tokens) against the model's own forwards, the rollout KV
cache released, and the step with the reference offloaded to the CPU equal to the plain one;
toy runs of two mini-batches that clip and whose GSPO and GRPO curves differ; DAPO's dynamic
sampling refilling a batch of equal rewards from the sampler, and overlong filtering; with
data.packing the step's completions in one packed row give the padded scoring forwards and step,
and the packed step at TP=2 and PP=2 equals the packed single process.

Launched by tests/test_dist_suites.py as oppo_step-x1 (one process: computes the single-process
steps and writes them to $OPPO_WORK/reference.pt and updates_reference.pt) and oppo_step-x2 (two
processes: compares with them; its launcher fixture, oppo_reference, is the x1 launch). The
reward is a small deterministic stand-in with the reward module's interface: the equivalence is
about parallelism, and the real reward is covered in tests/rewards.
"""
import os
from functools import partial
from pathlib import Path

import pytest
import rl_step_helpers
import torch
import torch.distributed as dist
from parallel_helpers import LetterReward
from rl_step_helpers import (
    check_resumes_exactly,
    check_step_matches,
    one_step,
    single_process_step,
    start_world,
    tiny_config,
    updates_step,
)

import megatron_omni.algorithms.oppo as oppo_module
import megatron_omni.generation.generator as generator
from megatron_omni.data.errors import SampleTooLongError
from megatron_omni.models.masking import ModalityMask
from megatron_omni.runs.omni import build_run, run

WORK = Path(os.environ.get("OPPO_WORK", "/nonexistent"))
# train.seed 1: the first step's completions hold visual and audio evidence (the reference checks it).
OPPO = ["oppo.grpo.group_size=2", "oppo.sampling.max_new_tokens=6", "oppo.sampling.temperature=1.0", "train.seed=1"]
config = partial(tiny_config, "toy_oppo.yaml", WORK, overrides=OPPO)
# Two mini-batches per rollout batch at a learning rate that moves the policy far enough in one
# update for the PPO clip to act on the second; Adam's eps keeps each update a smooth function of
# its gradient (a rounding-level gradient cannot flip an update's sign between layouts). TIS reads
# the engine's log-probs beside the trainer's behaviour forward.
UPDATES = {"oppo.grpo.mini_batches": 2, "optimizer.lr": 1e-2, "optimizer.min_lr": 1e-2, "optimizer.adam_eps": 1e-4,
           "oppo.grpo.tis_cap": 2.0}


@pytest.fixture(scope="module", autouse=True)
def world():
    start_world(WORK, "oppo_step-x1, oppo_step-x2")


def step(tp, pp):
    return one_step(config(tp, pp))


@pytest.fixture(scope="module")
def reference():
    """The single-process step: computed (and saved) by the one-process launch, loaded by the two-process one."""
    return single_process_step(WORK / "reference.pt", step)


def test_step_matches_single_process(reference):
    if dist.get_world_size() == 1:  # the reference itself
        assert reference["metrics"]["evidence_visual_tokens"] > 0 and reference["metrics"]["evidence_audio_tokens"] > 0
        return
    check_step_matches(reference, step, [(2, 1), (1, 2)],
                       ("reward_total", "completion_length", "policy_loss", "perception_loss", "ref_kl", "entropy",
                        "perception_kl_visual", "perception_kl_audio", "evidence_visual_tokens"))


# The toy MoE thinker (4 experts, top-2, DeepStack) shrunk as tiny_config shrinks the dense one;
# its head width (32) keeps the toy MoE config's MRoPE sections.
MOE = {"model.mrope_section": "[6, 5, 5]", "model.moe_ffn_hidden_size": 64}


def moe_step(tp, pp, ep=1):
    return one_step(tiny_config("toy_moe_oppo.yaml", WORK, tp, pp, overrides=OPPO,
                                **MOE, **{"parallel.expert_model_parallel_size": ep}))


@pytest.fixture(scope="module")
def moe_reference():
    return single_process_step(WORK / "moe_reference.pt", moe_step)


def test_moe_step_at_ep2_matches_single_process(moe_reference):
    """EP=2: two data-parallel ranks with two experts each and a prompt of their own, whose
    rollouts decode in step and whose rows (of different lengths) cross the all-gather dispatcher;
    the load-balancing loss in the gradients."""
    if dist.get_world_size() == 1:  # the reference itself: completions of different lengths
        assert moe_reference["metrics"]["completion_length"] > 0
        return
    # The rollout metrics are the whole step's too (each rank's prompt's completions, reduced).
    check_step_matches(moe_reference, partial(moe_step, ep=2), [(1, 1)],
                       ("reward_total", "completion_length", "evidence_visual_tokens", "evidence_audio_tokens",
                        "policy_loss", "perception_loss", "ref_kl", "entropy", "perception_kl_visual",
                        "perception_kl_audio"))


# The step's two completions in one micro-batch, padded [2, 416] or one packed row of 416 tokens:
# the perception loss is a mean per micro-batch, so the two layouts see the same micro-batches.
ONE_MICROBATCH = {"train.global_batch_size": 1, "train.seq_length": 416}


def keep_scores(kept: dict, r, microbatches) -> None:
    """The scoring forwards' outputs of the step's one micro-batch (reference log-probs of the
    completion tokens, masked-input logits of the evidence rows), in row-major sample order."""
    assert len(microbatches) == 1 and microbatches[0].batch.num_samples == 2
    scores = microbatches[0].scores
    kept.update(ref_logprobs=scores["ref_logprobs"].clone(), **{m: v.clone() for m, v in scores["masked"].items()})


def packing_step(tp, pp, packing=True, scores=None):
    inspect = None if scores is None else partial(keep_scores, scores)
    return one_step(config(tp, pp, **ONE_MICROBATCH, **{"data.packing": packing}), inspect=inspect)


@pytest.fixture(scope="module")
def packed_reference():
    """The packed single-process step (x1 computes and saves it, x2 loads it) and, in the
    one-process launch, its scoring forwards' outputs."""
    scores = {}
    return single_process_step(WORK / "packed_reference.pt", partial(packing_step, scores=scores)), scores


def test_packed_step_equals_padded_and_matches_single_process(packed_reference):
    """Packed scoring forwards and step equal the padded ones (1e-5); packed at TP=2 and PP=2 equal
    the packed single process."""
    reference, packed_scores = packed_reference
    keys = ("policy_loss", "perception_loss", "ref_kl", "entropy", "perception_kl_visual", "perception_kl_audio")
    if dist.get_world_size() > 1:
        check_step_matches(reference, packing_step, [(2, 1), (1, 2)], keys)
        return
    padded_scores = {}
    check_step_matches(reference, partial(packing_step, packing=False, scores=padded_scores), [(1, 1)], keys)
    assert set(packed_scores) == set(padded_scores) == {"ref_logprobs", "visual", "audio"}
    for name, padded in padded_scores.items():
        assert padded.numel() > 0, name
        torch.testing.assert_close(packed_scores[name], padded, atol=1e-5, rtol=0)


def updates(tp, pp):
    return updates_step(config(tp, pp, **UPDATES))


@pytest.fixture(scope="module")
def updates_reference():
    return single_process_step(WORK / "updates_reference.pt", updates)


def test_two_minibatch_step_matches_single_process(updates_reference):
    if dist.get_world_size() == 1:
        # The reference itself: the first update cannot clip (pi_old is the policy it starts from),
        # the second does; the engine sampled with the trainer's own numbers, so TIS weights are ~1
        # (the engine's log-probs sit at the right completion tokens) and none is capped.
        metrics = updates_reference["metrics"]
        assert metrics["update0_clip_fraction"] == 0 and metrics["update1_clip_fraction"] > 0
        assert metrics["update0_tis_logprob_abs_diff"] < 1e-4 and metrics["update0_tis_capped_fraction"] == 0
        return
    check_step_matches(updates_reference, updates, [(2, 1), (1, 2)],
                       ("update0_policy_loss", "update0_grad_norm", "update1_policy_loss", "update1_clip_fraction",
                        "update1_ref_kl", "update1_perception_loss", "update1_grad_norm", "update1_tis_logprob_abs_diff"))


def test_stopped_run_of_minibatches_resumes_exactly():
    if dist.get_world_size() == 1:
        pytest.skip("the resume check runs in the two-process launch")
    # PP=2 (the loop's pipeline shape for RL micro-batches); a cosine schedule over 3 steps x 2
    # optimizer steps, so the resumed scheduler's position shows in the learning rate.
    cosine = {**UPDATES, "optimizer.min_lr": 1e-3, "optimizer.lr_decay_style": "cosine"}
    straight = check_resumes_exactly(partial(config, 1, 2, **cosine), WORK / "resume",
                                     ("reward_total", "policy_loss", "perception_loss", "grad_norm", "ref_kl",
                                      "clip_fraction", "lr"))
    # The schedule spans train.steps x mini_batches optimizer steps: min_lr after the last one only.
    assert straight[-1]["lr"] == pytest.approx(1e-3) and straight[-2]["lr"] > 2e-3


def test_a_prompt_without_openset_labels_is_skipped_and_replaced(reference, capsys):
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    rl_step_helpers.check_prompt_without_is_replaced(config, WORK, "openset", "the labels of OPPO's reward", capsys)


def check_stores(r, microbatches, contexts):
    """What prepare kept: the rollouts' KV caches are gone although their contexts are still
    held; the reference is on the CPU; each micro-batch keeps the reference log-probs of its
    completion tokens and the masked-input logits of its evidence rows, as the models give them."""
    assert contexts and all(not ctx.key_value_memory_dict for ctx in contexts)
    assert {p.device.type for chunk in r.algorithm.reference_chunks for p in chunk.parameters()} == {"cpu"}
    cfg, vocab, model = r.cfg, r.cfg.model.vocab_size, r.model_chunks[0]
    for mb in microbatches:
        batch, completion = mb.batch, mb.batch.loss_mask.bool()
        with torch.no_grad():
            ref = r.algorithm.reference_chunks[0](batch.tokens, batch.position_ids, None, **batch.model_kwargs())
            expected = torch.log_softmax(ref[..., :vocab].double(), -1).gather(-1, batch.labels.unsqueeze(-1)).squeeze(-1)
            torch.testing.assert_close(mb.scores["ref_logprobs"].double(), expected[completion], rtol=0, atol=1e-5)
            for modality in ("visual", "audio"):
                kept, evidence = mb.scores["masked"].get(modality), mb.evidence[modality]
                assert not (evidence & ~completion).any()
                if not evidence.any():
                    assert kept is None or kept.numel() == 0
                    continue
                mask = ModalityMask(modality, cfg.omni.modality_mask_ratio, seed=cfg.train.seed)
                logits = model(batch.tokens, batch.position_ids, None, **batch.model_kwargs(), modality_mask=mask)
                assert kept.dtype == logits.dtype and torch.equal(kept, logits[evidence])


def test_scoring_keeps_rows_only_frees_kv_cache_and_offloaded_reference_changes_nothing(reference, monkeypatch):
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    contexts = []

    class HeldContext(generator.StaticInferenceContext):
        """Held past its rollout, as a leaked reference would."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            contexts.append(self)

    monkeypatch.setattr(generator, "StaticInferenceContext", HeldContext)
    metrics, grads = one_step(config(1, 1, **{"oppo.offload_reference": True}),
                              inspect=lambda r, mbs: check_stores(r, mbs, contexts))
    rl_step_helpers.check_same_step(metrics, grads, reference)


def test_minibatch_runs_clip_and_gspo_and_grpo_curves_differ():
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    curves = {level: run(config(1, 1, **UPDATES, **{"oppo.grpo.ratio_level": level, "train.steps": 2,
                                                    "output_dir": WORK / f"curve_{level}"}), reward=LetterReward())
              for level in ("token", "sequence")}
    assert max(r["clip_fraction"] for r in curves["token"]) > 0
    for key in ("policy_loss", "grad_norm"):
        assert [r[key] for r in curves["token"]] != [r[key] for r in curves["sequence"]], key


class EqualFirst(LetterReward):
    """The stand-in's evidence; rewards all equal on the first call, all different after it."""

    def __init__(self):
        self.calls = 0

    def compute(self, completions, samples):
        self.calls += 1
        n = len(completions)
        return {"total": torch.zeros(n) if self.calls == 1 else torch.arange(n, dtype=torch.float) / n}


def test_dynamic_sampling_refills_from_the_sampler_and_overlong_completions_are_filtered(reference):
    """Also pi_old from the engine with two mini-batches: no behaviour forward."""
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    r = build_run(config(1, 1, **{"oppo.grpo.dynamic_sampling": True, "oppo.grpo.overlong": "filter",
                                  "oppo.grpo.behaviour_logprobs": "engine", "oppo.grpo.mini_batches": 2}), reward=EqualFirst())
    first = r.sampler.next_indices()
    microbatches, metrics = r.algorithm.prepare(first, 0, draw=r.sampler.next_indices)
    # Both groups of the first draw had equal rewards: one more global batch was drawn and used.
    assert metrics["dynamic_sampling_rounds"] == 1 and r.sampler.consumed_samples == 2 * len(first)
    assert metrics["dynamic_sampling_uninformative_groups"] == metrics["dynamic_sampling_dropped_groups"] == 2
    assert metrics["dynamic_sampling_filled_groups"] == 0
    samples = r.algorithm.prompts.dataset.samples
    assert [mb.batch.sample_ids[0] for mb in microbatches] == [samples[i].id for i in r.sampler.indices_at(len(first))]
    # Overlong filtering: a completion without its stop token (cut at max_new_tokens) has no loss.
    stop, truncated = r.algorithm.sampling.stop_token_ids, []
    for mb in microbatches:
        for row in range(mb.batch.tokens.shape[0]):
            last = mb.batch.prompt_lengths[row] + 6 - 1  # the last place a 6-token completion can end
            ended = any(int(t) in stop for t in mb.batch.tokens[row, mb.batch.prompt_lengths[row]:last + 1])
            truncated.append(not ended)
            assert bool(mb.batch.loss_mask[row].any()) == ended
    assert metrics["truncated_fraction"] == sum(truncated) / len(truncated)
    # pi_old from the engine: its log-probs of the kept completions' tokens, and no behaviour forward.
    for mb in microbatches:
        assert "old_logprobs" not in mb.scores
        assert mb.scores["engine_logprobs"].shape == (len(mb.rows["completion"]),)


def test_a_prompt_without_room_for_its_completion_stops_before_any_rollout(monkeypatch):
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    r = build_run(config(1, 1, **{"train.seq_length": 64}), reward=LetterReward())
    monkeypatch.setattr(oppo_module, "collect_rollouts", lambda *args, **kwargs: pytest.fail("a rollout ran"))
    with pytest.raises(SampleTooLongError, match=r"train.jsonl, line \d+: sample \S+ has \d+ tokens, more than train.seq_length "
                                                 r"\(64\) minus oppo.sampling.max_new_tokens \(6\) for the completion"):
        r.algorithm.prepare(r.sampler.next_indices(), 0)


class EqualFirstOnRankOne(EqualFirst):
    """Rewards all equal on rank 1's first call only."""

    def compute(self, completions, samples):
        self.calls += 1
        n = len(completions)
        equal = self.calls == 1 and dist.get_rank() == 1
        return {"total": torch.zeros(n) if equal else torch.arange(n, dtype=torch.float) / n}


def test_moe_dynamic_sampling_at_ep2_refills_one_rank_while_the_other_decodes_in_step():
    """Rank 1's group of the first draw has equal rewards, rank 0's does not: rank 1 samples the
    next draw's prompt while rank 0, full, keeps the expert group's decode in step."""
    if dist.get_world_size() == 1:
        pytest.skip("runs in the two-process launch")
    cfg = tiny_config("toy_moe_oppo.yaml", WORK, overrides=OPPO, **MOE,
                      **{"parallel.expert_model_parallel_size": 2, "oppo.grpo.dynamic_sampling": True})
    r = build_run(cfg, reward=EqualFirstOnRankOne())
    first = r.sampler.next_indices()
    microbatches, metrics = r.algorithm.prepare(first, 0, draw=r.sampler.next_indices)
    assert metrics["dynamic_sampling_rounds"] == 1 and metrics["dynamic_sampling_dropped_groups"] == 1
    samples = r.algorithm.prompts.dataset.samples
    drawn = first if dist.get_rank() == 0 else r.sampler.indices_at(cfg.train.global_batch_size)
    assert [mb.batch.sample_ids[0] for mb in microbatches] == [samples[i].id for i in drawn]
