"""One OPPO step (rollouts, rewards, reference and masked scoring forwards, GRPO + perception
loss) at TP=2 and at PP=2 against the single-process step, and an exact resume.

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
import torch.distributed as dist
from rl_step_helpers import check_resumes_exactly, check_step_matches, one_step, single_process_step, start_world, tiny_config

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
