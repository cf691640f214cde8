"""The SLURM launch with a fake SLURM environment: the task launcher with two "nodes" on
127.0.0.1 (gloo), and the sbatch scripts with stand-ins for srun, scontrol and python."""
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_omni.parallel.runtime import read_dist_env

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "examples" / "slurm"
TASK = SLURM / "srun_task.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    """This process's environment without any launcher's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    return {**env, **extra}


def launch(task_envs: list[dict]) -> list[str]:
    procs = []
    for extra in task_envs:
        env = clean_env(**extra, OMP_NUM_THREADS="1", PYTHON=sys.executable)
        procs.append(subprocess.Popen(["bash", str(TASK), "megatron_omni.cli.check_launch"], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def layout(outputs: list[str]) -> set[tuple]:
    found = set()
    for out in outputs:
        for m in re.finditer(r"rank=(\d+) world_size=(\d+) local_rank=(\d+) master=([\d.]+):(\d+) .* all_reduce=(\w+)", out):
            found.add((int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5]), m[6]))
    return found


def test_one_torchrun_per_node():
    port = free_port()
    common = {"LAUNCH_MODE": "node", "SLURM_NNODES": "2", "NPROC_PER_NODE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    outputs = launch([{**common, "SLURM_NODEID": "0"}, {**common, "SLURM_NODEID": "1"}])
    assert layout(outputs) == {(0, 2, 0, "127.0.0.1", port, "ok"), (1, 2, 0, "127.0.0.1", port, "ok")}


def test_one_task_per_gpu_reads_slurm_variables():
    port = free_port()
    # No MASTER_ADDR: the first host of the compressed node list is the master.
    common = {"LAUNCH_MODE": "gpu", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "127.0.0.[1-2]", "MASTER_PORT": str(port)}
    outputs = launch([{**common, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)])
    assert layout(outputs) == {(0, 2, 0, "127.0.0.1", port, "ok"), (1, 2, 1, "127.0.0.1", port, "ok")}


def test_unknown_mode_is_refused():
    proc = subprocess.run(["bash", str(TASK), "x"], env={**os.environ, "LAUNCH_MODE": "both"}, capture_output=True, text=True)
    assert proc.returncode == 2 and "LAUNCH_MODE must be 'node' or 'gpu'" in proc.stderr


# ----------------------------------------------------------------------------- sbatch scripts

# srun: starts --ntasks-per-node tasks on each of SLURM_NNODES "nodes", one after the other, with
# the variables real srun gives a task.
FAKE_SRUN = """#!{python}
import os, subprocess, sys
args = sys.argv[1:]
command = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
per_node = int(next(a.split("=")[1] for a in args if a.startswith("--ntasks-per-node=")))
nodes = int(os.environ["SLURM_NNODES"])
for task in range(nodes * per_node):
    env = dict(os.environ, SLURM_NODEID=str(task // per_node), SLURM_PROCID=str(task),
               SLURM_LOCALID=str(task % per_node), SLURM_NTASKS=str(nodes * per_node))
    subprocess.run(command, env=env, check=True)
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$*" == "show hostnames node[7-8]" ]] && printf 'node7\\nnode8\\n'
"""
# python: records what it was asked to run and the launch variables it was given.
FAKE_PYTHON = """#!{python}
import json, os, sys
env = {{k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "MASTER_", "NPROC_", "LAUNCH_"))}}
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "env": env}}) + "\\n")
"""


def fake_bin(folder: Path) -> Path:
    folder.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("python", FAKE_PYTHON)):
        path = folder / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def workers(task: dict) -> tuple[set, list]:
    """(rank, world size, local rank, master) of every process one srun task starts, and the
    trainer command line: torchrun's arguments in node mode, read_dist_env in gpu mode."""
    argv = task["argv"]
    if argv[:2] == ["-m", "torch.distributed.run"]:
        split = argv.index("-m", 2)
        opts = dict(zip(argv[2:split:2], argv[3:split:2]))
        nproc, node = int(opts["--nproc-per-node"]), int(opts["--node-rank"])
        master = f"{opts['--master-addr']}:{opts['--master-port']}"
        return {(node * nproc + i, int(opts["--nnodes"]) * nproc, i, master) for i in range(nproc)}, argv[split:]
    d = read_dist_env(task["env"])
    return {(d.rank, d.world_size, d.local_rank, f"{d.master_addr}:{d.master_port}")}, argv


@pytest.mark.parametrize("mode", ["node", "gpu"])
@pytest.mark.parametrize(
    "name, config",
    [("oppo", "examples/configs/qwen2_5_omni_7b_oppo.yaml"), ("omniopsd", "examples/configs/qwen2_5_omni_7b_omniopsd.yaml")],
)
def test_sbatch_script(tmp_path, name, config, mode):
    """Two nodes of two GPUs: four ranks, the master on the first node, the script's trainer config."""
    script = SLURM / f"{name}.sbatch"
    assert f"#SBATCH --job-name={name}\n" in script.read_text()
    spool = tmp_path / "spool"  # sbatch runs a copy of the script from its spool folder
    spool.mkdir()
    shutil.copy(script, spool / "slurm_script")
    log = tmp_path / "tasks.jsonl"
    env = clean_env(
        PATH=f"{fake_bin(tmp_path / 'bin')}:{os.environ['PATH']}", PYTHON=str(tmp_path / "bin" / "python"),
        FAKE_LOG=str(log), SLURM_SUBMIT_DIR=str(REPO), SLURM_NNODES="2", SLURM_JOB_NODELIST="node[7-8]",
        LAUNCH_MODE=mode, GPUS_PER_NODE="2", MASTER_PORT="29555", LOG_DIR=str(tmp_path / "logs"), CKPT_DIR=str(tmp_path / "ckpt"),
    )
    proc = subprocess.run(["bash", str(spool / "slurm_script"), "train.steps=3"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    tasks = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(tasks) == (2 if mode == "node" else 4)
    found, commands = set(), []
    for task in tasks:
        ranks, command = workers(task)
        found |= ranks
        commands.append(command)
    assert found == {(rank, 4, rank % 2, "node7:29555") for rank in range(4)}
    if mode == "node":  # torchrun's grace time after SIGTERM ends before SLURM's SIGKILL
        lead = int(re.search(r"^#SBATCH --signal=TERM@(\d+)$", script.read_text(), re.M)[1])
        argv = tasks[0]["argv"]
        assert 0 < int(argv[argv.index("--shutdown-timeout") + 1]) < lead
    trainer = ["-m", "megatron_omni.cli.train", "--config", config,
               f"output_dir={tmp_path / 'logs' / name}", f"train.save_dir={tmp_path / 'ckpt'}", "train.steps=3"]
    assert commands == [trainer] * len(tasks)
