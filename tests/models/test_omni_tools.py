"""The command-line converters: a round trip through both tools, and a refused input."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from omni_helpers import assert_bit_identical, read_folder

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def restore_cuda_visible_devices(monkeypatch):
    # Importing a tool hides accelerators from the process; monkeypatch undoes that afterwards.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_both_tools_round_trip(converted_thinker, megatron_world, tmp_path, capsys):
    to_megatron, to_hf = load_tool("convert_hf_to_megatron"), load_tool("convert_megatron_to_hf")
    assert to_megatron.main(["--hf-dir", str(converted_thinker.hf_dir), "--out-dir", str(tmp_path / "megatron")]) == 0
    assert "from 1 safetensors file(s)" in capsys.readouterr().out
    args = ["--checkpoint", str(tmp_path / "megatron" / "iter_0000000"), "--out-dir", str(tmp_path / "hf"),
            "--max-shard-size", "1MB"]
    assert to_hf.main(args) == 0
    assert_bit_identical(read_folder(tmp_path / "hf"), read_folder(converted_thinker.hf_dir))


def test_tool_reports_a_refused_checkpoint(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    code = load_tool("convert_hf_to_megatron").main(["--hf-dir", str(tmp_path / "hf"), "--out-dir", str(tmp_path / "out")])
    assert code == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_export_tool_picks_the_iteration(converted_thinker, megatron_world, tmp_path, capsys):
    to_hf = load_tool("convert_megatron_to_hf")
    base = ["--checkpoint", str(converted_thinker.megatron_dir)]
    assert to_hf.main([*base, "--iteration", "3", "--out-dir", str(tmp_path / "missing")]) == 1
    assert "no complete checkpoint of iteration 3; complete ones: ['iter_0000000']" in capsys.readouterr().err
    assert to_hf.main([*base, "--iteration", "0", "--out-dir", str(tmp_path / "hf")]) == 0
    assert_bit_identical(read_folder(tmp_path / "hf"), read_folder(converted_thinker.hf_dir))
