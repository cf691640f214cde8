"""The decoder training job end to end: the loss falls, and a stopped run resumes exactly.
Runs inside `torchrun --nproc-per-node 2` (tests/test_dist_suites.py: decoder_job-x2)."""
import os

import pytest
import torch.distributed as dist
from parallel_helpers import shared_tmpdir

from megatron_omni.parallel import init_distributed
from megatron_omni.runs.decoder import run
from megatron_omni.training.config import RunConfig
from megatron_omni.training.metrics import read_metrics

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "configs", "toy_decoder.yaml")


@pytest.fixture(scope="module")
def workdir():
    init_distributed()
    return shared_tmpdir()


def job(workdir, name, steps, save_interval, exit_at_step=None, distributed_optimizer=False):
    out = os.path.join(workdir, name)
    return RunConfig.load(CONFIG, [
        f"output_dir={out}", f"train.save_dir={out}/ckpt", f"train.steps={steps}",
        f"train.exit_at_step={'null' if exit_at_step is None else exit_at_step}",
        f"train.save_interval={save_interval}", "logging.progress_bar=false", "logging.tensorboard=false",
        "train.seq_length=32", "train.global_batch_size=8", "train.micro_batch_size=4",
        f"parallel.use_distributed_optimizer={str(distributed_optimizer).lower()}",
    ])


@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["optimizer", "distributed_optimizer"])
def test_stopped_run_resumes_exactly(workdir, distributed_optimizer):
    """With the distributed optimizer the Adam state is sharded over the two data-parallel ranks and
    saved in megatron's dp_reshardable layout; its resume must be as exact as the plain optimizer's."""
    tag = "dist_opt_" if distributed_optimizer else ""
    straight = run(job(workdir, f"{tag}straight", steps=6, save_interval=0, distributed_optimizer=distributed_optimizer))
    # stops after its checkpoint
    run(job(workdir, f"{tag}stopped", steps=6, save_interval=3, exit_at_step=3, distributed_optimizer=distributed_optimizer))
    resumed = run(job(workdir, f"{tag}stopped", steps=6, save_interval=3, distributed_optimizer=distributed_optimizer))
    assert [r["step"] for r in resumed] == [4, 5, 6]
    for a, b in zip(resumed, straight[3:]):
        assert a["lm_loss"] == b["lm_loss"] and a["grad_norm"] == b["grad_norm"] and a["lr"] == b["lr"]
    if dist.get_rank() == 0:
        logged = read_metrics(os.path.join(workdir, f"{tag}stopped", "metrics.jsonl"))
        assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
        assert [r["lm_loss"] for r in logged] == [r["lm_loss"] for r in straight]


def test_loss_falls(workdir):
    history = run(job(workdir, "learn", steps=30, save_interval=0))
    first = sum(r["lm_loss"] for r in history[:3]) / 3
    last = sum(r["lm_loss"] for r in history[-3:]) / 3
    assert last < 0.6 * first, (first, last)
