"""Fault handling: a kill -9 in the middle of a checkpoint write (NaN steps and SIGTERM: the
fault_handling-x2 entry of tests/test_dist_suites.py, tests/dist/test_fault_handling.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def _job(out: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port", str(port),
            "-m", "megatron_omni.cli.pretrain_decoder", "--config", "examples/configs/toy_decoder.yaml",
            f"output_dir={out}", f"train.save_dir={out}/ckpt", "train.steps=6", "train.save_interval=2",
            "train.seq_length=32", "logging.progress_bar=false", "logging.tensorboard=false"]


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lm_loss"] for r in records}  # a repeated step: the resumed run's record wins


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = tmp_path / "straight"
    subprocess.run(_job(straight, 29621), cwd=REPO, env=env, check=True, capture_output=True, timeout=600)

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(_job(crashed, 29622), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = crashed / "ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (ckpt / "tmp.iter_0000004").exists() or (ckpt / "iter_0000004").exists():
            break
        time.sleep(0.002)
    # SIGKILL the launcher and every rank, mid-write (torchrun puts its workers in sessions of
    # their own, so the process group alone would miss them).
    launcher = psutil.Process(proc.pid)
    for process in [*launcher.children(recursive=True), launcher]:
        process.send_signal(signal.SIGKILL)
    proc.wait()
    complete = sorted(p.name for p in ckpt.glob("iter_*") if (p / "COMPLETE").is_file())
    assert complete and complete[0] == "iter_0000002"

    resumed = subprocess.run(_job(crashed, 29623), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpt / complete[-1]}" in resumed.stdout
    assert _losses(crashed) == _losses(straight)
