"""Shared by the RL torchrun suites (OPPO, OmniOPSD): a tiny toy run's config, one step's metrics
and gradients (one update, or the loop's several), the comparison with the single-process step,
the stop-and-resume check, and a step whose first prompt is skipped."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from parallel_helpers import LetterReward, assert_close_rel, full_tensors

from megatron_omni.config import load_config
from megatron_omni.data.manifest import load_manifest, write_manifest
from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.parallel import init_distributed
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.omni import build_run, run
from megatron_omni.training.metrics import read_metrics
from megatron_omni.training.step import optimizer_step, run_microbatches

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def start_world(work: Path, entries: str) -> None:
    """The suites' module fixture: only under their launcher, which prepares ``work``."""
    if not work.is_dir():
        pytest.skip(f"launched by tests/test_dist_suites.py ({entries}), which prepares the work folder")
    init_distributed()


def tiny_config(config: str, work: Path, tp: int = 1, pp: int = 1, overrides: list[str] = (), **extra) -> OmniTrainConfig:
    """``examples/configs/<config>`` shrunk to a 64-wide model on 6 toy clips, 3 steps of 2 prompts."""
    return load_config(CONFIGS / config, [
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}",
        f"dataset.toy_dir={work / 'toy'}", "dataset.toy_num_clips=6", "init_from=null",
        "model.hidden_size=64", "model.ffn_hidden_size=128", "model.mrope_section=[2, 3, 3]",
        "omni.vision.out_hidden_size=64", "omni.audio.output_dim=64",
        "train.global_batch_size=2", "train.micro_batch_size=1", "train.steps=3", "train.save_dir=null",
        # Stand-in reward and a lexicon-free run: no wheel folder is read.
        "reward.wheel_dir=unused", "logging.progress_bar=false", "logging.tensorboard=false",
        *overrides, *[f"{k}={v}" for k, v in extra.items()],
    ], cls=OmniTrainConfig)


def one_step(cfg: OmniTrainConfig, inspect=None):
    """Step 0's metrics (prepare + forward/backward, no optimizer update) and full gradients;
    ``inspect(run, microbatches)`` looks at the prepared micro-batches before the step runs."""
    r = build_run(cfg, reward=LetterReward())
    for chunk in r.model_chunks:
        chunk.zero_grad_buffer()
    microbatches, metrics = r.algorithm.prepare(r.sampler.next_indices(), 0)
    if inspect is not None:
        inspect(r, microbatches)
    metrics.update(run_microbatches(r.model_chunks, microbatches, r.algorithm.forward_step,
                                    r.cfg.train.seq_length, r.algorithm.microbatch_rows))
    return metrics, full_tensors(r.model_chunks, "grad")


def updates_step(cfg: OmniTrainConfig):
    """Step 0 as the loop makes it with several optimizer steps per rollout batch: prepare's
    metrics, each update's as ``update<k>_<name>``, and the gradients of the last update."""
    r = build_run(cfg, reward=LetterReward())
    microbatches, metrics = r.algorithm.prepare(r.sampler.next_indices(), 0)
    for k, part in enumerate(r.algorithm.mini_batches(microbatches)):
        update = optimizer_step(r.model_chunks, r.optimizer, r.scheduler, part, r.algorithm.forward_step,
                                cfg.train.seq_length, r.algorithm.microbatch_rows)
        metrics.update({f"update{k}_{name}": value for name, value in update.items()})
    return metrics, full_tensors(r.model_chunks, "grad")


def check_prompt_without_is_replaced(config, work: Path, field: str, reader: str, capsys) -> None:
    """Step 0 of ``config(1, 1)`` under data.skip_bad_samples on the toy manifest (built by an earlier
    step in ``work``) whose first prompt of the step lacks ``field``: printed, counted, replaced."""
    samples = load_manifest(work / "toy" / "train.jsonl")
    seed, batch = config(1, 1).train.seed, config(1, 1).train.global_batch_size
    first = ResumableBatchSampler(len(samples), batch, seed=seed).indices_at(0)[0]
    bad = samples[first].id
    samples[first] = dataclasses.replace(samples[first], **{field: type(getattr(samples[first], field))()})
    manifest = write_manifest(work / f"without_{field}.jsonl", samples)
    cfg = config(1, 1, **{"dataset.train_manifest": manifest, "dataset.tokenizer_dir": work / "toy" / "tokenizer",
                          "data.skip_bad_samples": True, "data.max_skipped_fraction": 0.5})
    metrics, _ = one_step(cfg)
    assert metrics["skipped_samples"] == 1 and metrics["skipped_samples_total"] == 1
    out = capsys.readouterr().out
    assert f"[data] skipped sample {bad} (missing label): " in out and f"has no '{field}' ({reader})" in out
    assert metrics["completion_length"] > 0 and all(math.isfinite(v) for v in metrics.values())


def single_process_step(reference: Path, step) -> dict:
    """``{"metrics", "grads"}`` of ``step(1, 1)``, the step every layout is compared with. The
    one-process launch computes it and saves it to ``reference``; the two-process launch loads it
    (its launcher fixture, e.g. ``oppo_reference``, is the one-process launch)."""
    if dist.get_world_size() == 1:
        metrics, grads = step(1, 1)
        expected = {"metrics": metrics, "grads": grads}
        torch.save(expected, reference)
        return expected
    if not reference.is_file():
        pytest.fail(f"no {reference}: the one-process launch writes it (tests/test_dist_suites.py, the *_reference fixtures)")
    return torch.load(reference, weights_only=False)


def check_step_matches(expected: dict, step, layouts, keys) -> None:
    """Each (tp, pp) layout's step equals ``expected`` (metrics ``keys`` and every gradient within 1e-5 relative)."""
    for tp, pp in layouts:
        metrics, grads = step(tp, pp)
        for key in keys:
            assert abs(metrics[key] - expected["metrics"][key]) <= 1e-5 * max(1.0, abs(expected["metrics"][key])), (tp, pp, key)
        assert_close_rel(grads, expected["grads"], rtol=1e-5)


def check_same_step(metrics: dict, grads: dict, expected: dict) -> None:
    """The same step as ``expected`` to the last bit: every metric but timings, every gradient."""
    def untimed(values):
        return {k: v for k, v in values.items() if not (k.startswith("time_") or k.endswith("_per_s"))}

    assert untimed(metrics) == untimed(expected["metrics"])
    assert set(grads) == set(expected["grads"])
    for name, grad in grads.items():
        assert torch.equal(grad, expected["grads"][name]), name


def check_resumes_exactly(config, out: Path, keys, workers: int = 0) -> list[dict]:
    """3 steps straight vs stopped after 2 and resumed: the third step and the logged curve agree;
    returns the straight run's metrics. The stopped and resumed runs load their prompts with
    ``data.num_workers=workers`` (the straight run in process)."""
    straight = run(config(**{"output_dir": out / "straight", "train.save_dir": out / "straight/ckpt"}), reward=LetterReward())
    stopped = {"output_dir": out / "stopped", "train.save_dir": out / "stopped/ckpt", "train.save_interval": 2,
               "data.num_workers": workers}
    run(config(**stopped, **{"train.exit_at_step": 2}), reward=LetterReward())
    resumed = run(config(**stopped), reward=LetterReward())
    assert [r["step"] for r in resumed] == [3]
    assert {k: resumed[0][k] for k in keys} == {k: straight[2][k] for k in keys}
    if dist.get_rank() == 0:
        logged = read_metrics(out / "stopped" / "metrics.jsonl")
        assert [r[keys[0]] for r in logged] == [r[keys[0]] for r in straight]
    return straight
