"""One OPPO step (rollouts, rewards, reference and masked scoring forwards, GRPO + perception
loss) at TP=2 and at PP=2 against the single-process step, and an exact resume; what the scoring
forwards keep (evidence rows, completion tokens) against the model's own forwards, the rollout KV
cache released, and the step with the reference offloaded to the CPU equal to the plain one.

Launched by tests/test_dist_suites.py as oppo_step-x1 (one process: computes the single-process
step and writes it to $OPPO_WORK/reference.pt) and oppo_step-x2 (two processes: compares with it;
its launcher fixture, oppo_reference, is the x1 launch). The reward is a small deterministic
stand-in with the reward module's interface: the equivalence is about parallelism, and the real
reward is covered in tests/rewards.
"""
import os
from functools import partial
from pathlib import Path

import pytest
import rl_step_helpers
import torch
import torch.distributed as dist
from rl_step_helpers import check_resumes_exactly, check_step_matches, one_step, single_process_step, start_world, tiny_config

import megatron_omni.generation.generator as generator
from megatron_omni.models.masking import ModalityMask

WORK = Path(os.environ.get("OPPO_WORK", "/nonexistent"))
OPPO = ["oppo.grpo.group_size=2", "oppo.sampling.max_new_tokens=6", "oppo.sampling.temperature=1.0"]
config = partial(tiny_config, "toy_oppo.yaml", WORK, overrides=OPPO)


@pytest.fixture(scope="module", autouse=True)
def world():
    start_world(WORK, "oppo_step-x1, oppo_step-x2")


def step(tp, pp):
    return one_step(config(tp, pp), group_size=2)


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


def test_stopped_run_resumes_exactly():
    if dist.get_world_size() == 1:
        pytest.skip("the resume check runs in the two-process launch")
    check_resumes_exactly(partial(config, 2, 1), WORK / "resume",
                          ("reward_total", "policy_loss", "perception_loss", "grad_norm", "ref_kl"))


def test_a_prompt_without_openset_labels_is_skipped_and_replaced(reference, capsys):
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    rl_step_helpers.check_prompt_without_is_replaced(config, WORK, "openset", "the labels of OPPO's reward", 2, capsys)


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
    metrics, grads = one_step(config(1, 1, **{"oppo.offload_reference": True}), group_size=2,
                              inspect=lambda r, mbs: check_stores(r, mbs, contexts))
    rl_step_helpers.check_same_step(metrics, grads, reference)
