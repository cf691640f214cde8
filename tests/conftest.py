"""Shared test set-up.

Environment flags are set before any project module is imported: Triton reads TRITON_INTERPRET
when `@triton.jit` runs, and no test may reach a model hub.
"""
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MEGATRON_OMNI_SHARED_DATA", REPO.parent / "shared" / "data"))

# Modules under tests/dist/ only make sense inside a torchrun world; the main session launches
# them through the table in tests/test_dist_suites.py instead of collecting them itself.
if "WORLD_SIZE" not in os.environ:
    collect_ignore_glob = ["dist/*"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def shared_data():
    """The public research data beside the project; tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared research data not found at {SHARED_DATA} (set MEGATRON_OMNI_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def torchrun():
    """Run a pytest module under `torchrun --nproc-per-node N`; fails with the ranks' output
    (tests/test_dist_suites.py launches every tests/dist/ module through it)."""

    def run(module: str, nproc: int, timeout: int = 600, extra_env: dict | None = None):
        env = dict(os.environ, OMP_NUM_THREADS="1", **(extra_env or {}))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "--local-ranks-filter=0",
            "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(REPO / module),
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            pytest.fail(f"torchrun {module} x{nproc} failed (rc={proc.returncode}):\n"
                        f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
        return proc.stdout

    return run
