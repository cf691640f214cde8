"""Non-finite steps are skipped and counted; SIGTERM checkpoints and a resume is exact.
Runs inside `torchrun --nproc-per-node 2` (tests/test_dist_suites.py: fault_handling-x2; kill -9 during
a checkpoint write: tests/training/test_preemption.py)."""
import os
import signal

import pytest
import torch
from megatron.core import parallel_state
from parallel_helpers import shared_tmpdir

from megatron_omni.algorithms.lm import LanguageModeling
from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.data.text_corpus import TextWindows, generate_sentences
from megatron_omni.models.decoder import build_decoder
from megatron_omni.parallel import init_distributed, initialize_parallel, set_seed
from megatron_omni.training.config import RunConfig
from megatron_omni.training.loop import train
from megatron_omni.training.model_setup import build_model_chunks, unwrap
from megatron_omni.training.optimizer import build_optimizer

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "configs", "toy_decoder.yaml")
DATA = TextWindows(generate_sentences(300, 0), 32)


@pytest.fixture(scope="module")
def workdir():
    init_distributed()
    return shared_tmpdir()


class Faulty(LanguageModeling):
    """Language modelling whose loss is NaN at the given steps, or that raises SIGTERM at one."""

    def __init__(self, *args, nan_steps=(), sigterm_step=None):
        super().__init__(*args)
        self.nan_steps, self.sigterm_step = set(nan_steps), sigterm_step
        self.step = 0

    def prepare(self, indices, step):
        self.step = step + 1
        if self.step == self.sigterm_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().prepare(indices, step)

    def forward_step(self, batch, model):
        output, loss_func = super().forward_step(batch, model)
        if self.step not in self.nan_steps:
            return output, loss_func

        def poisoned(out):
            total, count, metrics = loss_func(out)
            return total * float("nan"), count, metrics

        return output, poisoned


def run(workdir, name, steps, save_interval=0, **faults):
    out = os.path.join(workdir, name)
    cfg = RunConfig.load(CONFIG, [
        f"output_dir={out}", f"train.save_dir={out}/ckpt", f"train.steps={steps}", f"train.save_interval={save_interval}",
        "train.seq_length=32", "train.global_batch_size=8", "train.micro_batch_size=4",
        "optimizer.lr_warmup_steps=0", "optimizer.lr_decay_style=constant",
        "logging.progress_bar=false", "logging.tensorboard=false", "train.max_nonfinite_in_a_row=3",
    ])
    p = cfg.parallel
    initialize_parallel(p.tensor_model_parallel_size, p.pipeline_model_parallel_size)
    set_seed(cfg.train.seed)
    chunks = build_model_chunks(cfg, build_decoder)
    optimizer, scheduler = build_optimizer(cfg, chunks)
    sampler = ResumableBatchSampler(len(DATA), 8, parallel_state.get_data_parallel_rank(),
                                    parallel_state.get_data_parallel_world_size(), seed=cfg.train.seed)
    algorithm = Faulty(DATA, 4, True, **faults)
    history = train(cfg, chunks, optimizer, scheduler, sampler, algorithm)
    params = {n: p.detach().clone() for n, p in unwrap(chunks[0]).named_parameters()}
    return history, params


def test_nonfinite_step_is_skipped_counted_and_training_continues(workdir):
    _, before = run(workdir, "clean2", steps=2)
    history, after = run(workdir, "nan3", steps=3, nan_steps={3})
    assert history[2]["nonfinite"] == 1 and history[2]["skipped"] == 1 and history[2]["nonfinite_total"] == 1
    assert all(torch.equal(before[n], after[n]) for n in before), "a skipped step must not touch the weights"
    history, _ = run(workdir, "nan3", steps=6, nan_steps={3})  # resumes after the skipped step
    assert [h["step"] for h in history] == [4, 5, 6]
    assert all(h["nonfinite"] == 0 for h in history) and history[-1]["nonfinite_total"] == 1


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(workdir):
    history, _ = run(workdir, "nan_forever", steps=10, nan_steps=set(range(2, 11)))
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert [h["nonfinite"] for h in history] == [0, 1, 1, 1]


def test_sigterm_checkpoints_and_resume_is_exact(workdir):
    straight, _ = run(workdir, "straight", steps=5)
    stopped, _ = run(workdir, "term", steps=5, sigterm_step=2)
    assert [h["step"] for h in stopped] == [1, 2]
    assert os.path.isfile(os.path.join(workdir, "term", "ckpt", "iter_0000002", "COMPLETE"))
    resumed, _ = run(workdir, "term", steps=5)
    assert [h["step"] for h in resumed] == [3, 4, 5]
    for a, b in zip(resumed, straight[2:]):
        assert (a["lm_loss"], a["grad_norm"], a["lr"]) == (b["lm_loss"], b["grad_norm"], b["lr"])
