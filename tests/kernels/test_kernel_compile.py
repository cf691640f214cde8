"""The GPU build of every Triton kernel variant, made ahead of time for Hopper (sm_90) without a
GPU: it must compile, keep everything in registers, and stream logits with 128-bit loads (and
gradients with 128-bit stores) even when the real vocabulary size is no multiple of 16."""
import json
import os
import subprocess
import sys

import pytest

from megatron_omni.kernels.common import compile_check

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    if not compile_check.tools_available():
        pytest.skip("Triton's NVIDIA tools (ptxas, cuobjdump) are not installed")
    env = dict(os.environ, TRITON_INTERPRET="0")  # build for the GPU, not the interpreter
    proc = subprocess.run([sys.executable, "-m", "megatron_omni.kernels.common.compile_check", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_every_variant_compiles_without_spills(compiled):
    assert len(compiled) == len(compile_check.VARIANTS)
    for variant in compiled:
        assert variant["local_bytes"] == 0, f"{variant['kernel']} {variant['constexprs']} spills to local memory"


def test_logits_stream_through_vector_loads_and_stores(compiled):
    for variant in compiled:
        assert "LDG.E.128" in variant["global_loads"], f"{variant['kernel']}: no 128-bit loads"
        if "backward" in variant["kernel"]:
            assert "STG.E.128" in variant["global_stores"], f"{variant['kernel']}: no 128-bit stores"
