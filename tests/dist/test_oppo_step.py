"""One OPPO step (rollouts, rewards, reference and masked scoring forwards, GRPO + perception
loss) at TP=2 and at PP=2 against the single-process step, and an exact resume.

Launched by tests/test_oppo.py: first with one process (writes the reference to $OPPO_WORK),
then with two (compares). The reward is a small deterministic stand-in with the reward
module's interface: the equivalence is about parallelism, and the real reward is covered in
tests/rewards.
"""
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from megatron_omni.config import load_config
from megatron_omni.parallel import init_distributed
from megatron_omni.rewards.cue_recovery import EvidenceSentence
from megatron_omni.rewards.sentences import split_sentences
from megatron_omni.train_config import OmniTrainConfig
from megatron_omni.train_omni import build_run, run
from megatron_omni.training.metrics import read_metrics
from megatron_omni.training.step import run_microbatches
from parallel_helpers import assert_close_rel, full_tensors

WORK = Path(os.environ.get("OPPO_WORK", "/nonexistent"))
CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "toy_oppo.yaml"


class LetterReward:
    """Rewards completions for the letter 'a'; sentences alternate visual / audio evidence."""

    def compute(self, completions, samples):
        total = torch.tensor([t.count("a") / max(1, len(t)) for t in completions])
        return {"total": total, "ew": total, "format": torch.zeros_like(total)}

    def evidence_sentences(self, completion, sample):
        kinds = ("visual", "audio", "neutral")
        return [EvidenceSentence(s.start, s.end, kinds[i % 3]) for i, s in enumerate(split_sentences(completion))]


@pytest.fixture(scope="module", autouse=True)
def world():
    if not WORK.is_dir():
        pytest.skip("launched by tests/test_oppo.py, which prepares $OPPO_WORK")
    init_distributed()
    yield


def config(tp=1, pp=1, **extra):
    overrides = [
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}",
        f"dataset.toy_dir={WORK / 'toy'}", "dataset.toy_num_clips=6", "init_from=null",
        "model.hidden_size=64", "model.ffn_hidden_size=128", "model.mrope_section=[2, 3, 3]",
        "omni.vision.out_hidden_size=64", "omni.audio.output_dim=64",
        "train.global_batch_size=2", "train.micro_batch_size=1", "train.steps=3", "train.save_dir=null",
        "oppo.grpo.group_size=2", "oppo.sampling.max_new_tokens=6", "oppo.sampling.temperature=1.0",
        # Stand-in reward and a lexicon-free run: no wheel folder is read.
        "reward.wheel_dir=unused", "logging.progress_bar=false", "logging.tensorboard=false",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(CONFIG, overrides, cls=OmniTrainConfig)


def one_step(tp, pp):
    r = build_run(config(tp, pp), reward=LetterReward())
    for chunk in r.model_chunks:
        chunk.zero_grad_buffer()
    microbatches, metrics = r.algorithm.prepare(r.sampler.next_indices(), 0)
    metrics.update(run_microbatches(r.model_chunks, microbatches, r.algorithm.forward_step,
                                    r.cfg.train.seq_length, r.cfg.train.micro_batch_size * 2))
    return metrics, full_tensors(r.model_chunks, "grad")


def test_step_matches_single_process():
    reference = WORK / "reference.pt"
    if dist.get_world_size() == 1:
        metrics, grads = one_step(1, 1)
        assert metrics["evidence_visual_tokens"] > 0 and metrics["evidence_audio_tokens"] > 0
        torch.save({"metrics": metrics, "grads": grads}, reference)
        return
    expected = torch.load(reference, weights_only=False)
    for tp, pp in [(2, 1), (1, 2)]:
        metrics, grads = one_step(tp, pp)
        for key in ("reward_total", "completion_length", "policy_loss", "perception_loss", "ref_kl", "entropy",
                    "perception_kl_visual", "perception_kl_audio", "evidence_visual_tokens"):
            assert abs(metrics[key] - expected["metrics"][key]) <= 1e-5 * max(1.0, abs(expected["metrics"][key])), (tp, pp, key)
        assert_close_rel(grads, expected["grads"], rtol=1e-5)


def test_stopped_run_resumes_exactly():
    if dist.get_world_size() == 1:
        pytest.skip("the resume check runs in the two-process launch")
    out = WORK / "resume"
    straight = run(config(2, 1, **{"output_dir": out / "straight", "train.save_dir": out / "straight/ckpt"}), reward=LetterReward())
    stopped = {"output_dir": out / "stopped", "train.save_dir": out / "stopped/ckpt", "train.save_interval": 2}
    run(config(2, 1, **stopped, **{"train.exit_at_step": 2}), reward=LetterReward())
    resumed = run(config(2, 1, **stopped), reward=LetterReward())
    assert [r["step"] for r in resumed] == [3]
    keys = ("reward_total", "policy_loss", "perception_loss", "grad_norm", "ref_kl")
    assert {k: resumed[0][k] for k in keys} == {k: straight[2][k] for k in keys}
    if dist.get_rank() == 0:
        logged = read_metrics(out / "stopped" / "metrics.jsonl")
        assert [r["reward_total"] for r in logged] == [r["reward_total"] for r in straight]
