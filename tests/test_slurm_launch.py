"""The SLURM task launcher with a fake SLURM environment: two "nodes" on 127.0.0.1 (gloo)."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "examples" / "slurm" / "srun_task.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(task_envs: list[dict]) -> list[str]:
    procs = []
    for extra in task_envs:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
        env.update(extra, OMP_NUM_THREADS="1", PYTHON=sys.executable)
        procs.append(subprocess.Popen(["bash", str(TASK), "megatron_omni.parallel.check"], cwd=REPO, env=env,
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
