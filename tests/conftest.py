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


@pytest.fixture(scope="module")
def single_process():
    """A one-process world with megatron's TP = PP = 1 groups for a module's tests (reuses a running one)."""
    from megatron_omni.convert.world import single_process_world

    with single_process_world():
        yield


@pytest.fixture
def shared_data():
    """The public research data beside the project; tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared research data not found at {SHARED_DATA} (set MEGATRON_OMNI_SHARED_DATA)")
    return SHARED_DATA


# Inside a launch of the torchrun fixture, each rank records every test's outcome as it happens
# (a rank killed by its launcher still leaves what it got through), so the parent can tell which
# module of a launch failed.
_REPORTS = os.environ.get("TORCHRUN_TEST_REPORTS") if "WORLD_SIZE" in os.environ else None
if _REPORTS:
    def pytest_runtest_logreport(report):
        if report.when == "call" or report.failed:
            with open(Path(_REPORTS) / f"rank{os.environ['RANK']}.txt", "a") as fh:
                fh.write(f"{report.outcome} {report.nodeid}\n")
        if report.failed:  # the parent shows only rank 0's output; a failure on another rank says why here
            with open(Path(_REPORTS) / f"rank{os.environ['RANK']}.failures", "a") as fh:
                fh.write(f"rank {os.environ['RANK']}, {report.nodeid}:\n{report.longreprtext}\n")


@pytest.fixture(scope="session")
def torchrun(tmp_path_factory):
    """Run pytest modules in one `torchrun --nproc-per-node N` launch (tests/test_dist_suites.py
    launches every tests/dist/ module through it). Returns {module: None if it passed, else the
    reason with the ranks' output} for the modules that came to a result: the launch stops at the
    first failure (-x), so the modules after a failed one are left out (they did not run), and when
    the launch itself failed (timeout, crash) every module failed."""

    def run(modules: list[str], nproc: int, timeout: int = 600, extra_env: dict | None = None) -> dict[str, str | None]:
        reports = tmp_path_factory.mktemp("torchrun_reports")
        env = dict(os.environ, OMP_NUM_THREADS="1", TORCHRUN_TEST_REPORTS=str(reports), **(extra_env or {}))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "--local-ranks-filter=0",
            "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *(str(REPO / m) for m in modules),
        ]
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = f"timeout after {timeout} s", exc.stdout or "", exc.stderr or ""
            stdout, stderr = (s.decode(errors="replace") if isinstance(s, bytes) else s for s in (stdout, stderr))
        if rc == 0:
            return {m: None for m in modules}
        failures = "".join(f.read_text() for f in sorted(reports.glob("*.failures")))
        output = (f"torchrun {' '.join(modules)} x{nproc} failed (rc={rc}):\n{failures[-6000:]}\n"
                  f"rank 0's output:\n{stdout[-6000:]}\n{stderr[-6000:]}")
        failed = {line.split()[1].split("::")[0] for f in reports.glob("*.txt") for line in f.read_text().splitlines()
                  if line.startswith("failed ")}
        first = next((i for i, m in enumerate(modules) if m in failed), None)
        if first is None:  # no test failed: the launch itself did (timeout, crash), nothing can be trusted
            return {m: output for m in modules}
        return {m: None if i < first else output for i, m in enumerate(modules[: first + 1])}

    return run
