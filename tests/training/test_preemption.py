"""Preemption and crashes on the real launchers, one chain of runs of the toy decoder job (2 ranks):

1. SIGTERM to torchrun's pid during the save of step 4, after the periodic save of step 2;
2. SIGTERM to every process of a SLURM step (what slurmstepd does for ``--signal=TERM@lead``) under
   the stand-in srun of tests/parallel/test_slurm_launch.py, one step after resuming (before this
   run's first save);
3. ``kill -9`` of the launcher and both ranks in the middle of a checkpoint write: no process of
   theirs (checkpoint helper, multiprocessing's resource tracker) outlives them;
4. an ordinary run finishes the job.

Each signal checkpoints the step in progress and the run exits; every run resumes from the newest
complete checkpoint, and the losses of the whole chain equal those of an uninterrupted run that
never saved at every step.
(NaN steps and SIGTERM inside the trainer: tests/dist/test_fault_handling.py.)"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "parallel"))
from test_slurm_launch import TASK, clean_env, fake_bin  # noqa: E402

STEPS = 8
MODULE = "megatron_omni.cli.pretrain_decoder"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_args(out: Path, saves: bool = True) -> list[str]:
    checkpoints = ["train.save_interval=2", f"train.save_dir={out}/ckpt"] if saves else ["train.save_dir=null"]
    return ["--config", "examples/configs/toy_decoder.yaml", f"train.steps={STEPS}", "train.seq_length=32",
            "logging.progress_bar=false", "logging.tensorboard=false", f"output_dir={out}", *checkpoints]


def torchrun(out: Path, saves: bool = True) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port", str(free_port()),
            "-m", MODULE, *trainer_args(out, saves)]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lm_loss"] for r in records}  # a repeated step: the resumed run's record wins


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """The losses of a run that is never interrupted and never saves (nor starts a checkpoint helper)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(torchrun(out, saves=False), cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)
    assert sorted(losses(out)) == list(range(1, STEPS + 1))
    return losses(out)


def wait_until(condition, proc, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.002)


def steps_logged(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def resumed_line(out: Path, step: int) -> str:
    return f"resumed from {out / 'ckpt' / f'iter_{step:07d}'} at step {step}"


def stopped_by_sigterm(out: Path, log: Path) -> int:
    """The step the signal checkpointed: named by ``latest``, complete, no tmp.* folder left."""
    text = log.read_text()
    assert "BrokenPipeError" not in text, text[-3000:]
    line = next((ln for ln in text.splitlines() if "[train] SIGTERM: checkpointing step" in ln), None)
    assert line is not None, text[-3000:]
    step = int(line.split("step ")[1].split()[0])
    ckpt = out / "ckpt"
    assert (ckpt / "latest").read_text() == f"iter_{step:07d}" and (ckpt / f"iter_{step:07d}" / "COMPLETE").is_file()
    assert not list(ckpt.glob("tmp.*")), sorted(p.name for p in ckpt.iterdir())
    return step


def test_sigterm_to_the_launchers_and_kill_9_lose_nothing(tmp_path, reference):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt"

    # 1. torchrun's pid, during the save of step 4.
    log = tmp_path / "1-torchrun.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(torchrun(out), cwd=REPO, env=ENV, stdout=fh, stderr=subprocess.STDOUT)
        wait_until(lambda: (ckpt / "tmp.iter_0000004").exists(), proc, "save of step 4")
        assert (ckpt / "iter_0000002" / "COMPLETE").is_file()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    first = stopped_by_sigterm(out, log)
    assert first >= 4

    # 2. Every process of a SLURM step, one step after resuming.
    log = tmp_path / "2-srun.log"
    env = clean_env(PATH=f"{fake_bin(tmp_path / 'bin')}:{os.environ['PATH']}", PYTHON=sys.executable,
                    OMP_NUM_THREADS="1", LAUNCH_MODE="node", SLURM_NNODES="1", NPROC_PER_NODE="2",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    with log.open("w") as fh:
        srun = subprocess.Popen([str(tmp_path / "bin" / "srun"), "--ntasks-per-node=1", "bash", str(TASK), MODULE,
                                 *trainer_args(out)], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        wait_until(lambda: steps_logged(out) > first, srun, f"step {first + 1}")
        for process in psutil.Process(srun.pid).children(recursive=True):
            process.send_signal(signal.SIGTERM)
        srun.wait(timeout=300)
    assert resumed_line(out, first) in log.read_text()
    second = stopped_by_sigterm(out, log)
    assert first < second < STEPS

    # 3. kill -9 of the launcher and the ranks while the last checkpoint is written.
    proc = subprocess.Popen(torchrun(out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launcher = psutil.Process(proc.pid)

    def saving_with_helpers() -> bool:  # each rank has its checkpoint helper and resource tracker
        # The folder first: listing processes reads all of /proc, which at this rate would take a
        # core from the ranks for the whole run.
        if not (ckpt / f"tmp.iter_{STEPS:07d}").exists():
            return False
        ranks = launcher.children()
        return len(ranks) == 2 and all(len(r.children()) >= 2 for r in ranks)

    wait_until(saving_with_helpers, proc, f"save of step {STEPS}")
    ranks = launcher.children()
    others = [p for rank in ranks for p in rank.children(recursive=True)]
    for process in [launcher, *ranks]:
        process.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(others, timeout=20)
    assert not alive, [p.cmdline() for p in alive]

    # 4. An ordinary run finishes the job.
    last = subprocess.run(torchrun(out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-3000:]
    assert resumed_line(out, STEPS - 2) in last.stdout
    assert f"removed {ckpt / f'tmp.iter_{STEPS:07d}'}, an unfinished save of an earlier run" in last.stdout
    assert losses(out) == reference



def test_a_step_and_a_save_longer_than_the_launchers_grace_time_are_reported(monkeypatch):
    from megatron_omni.training.loop import StopRequest

    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "10")
    assert StopRequest.over_grace(4.0, 6.0) is None
    warning = StopRequest.over_grace(4.0, 6.5)
    assert "a step (4.0 s) and a checkpoint (6.5 s) take longer than the 10 s" in warning
    assert "Raise TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in warning
