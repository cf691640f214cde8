"""Bounded-memory conversion: on a synthetic thinker over twice the size of the conversions' peak
memory, each direction's peak resident memory (measured in a child process by
tools/bench_convert.py, both directions in one to save a start) stays within
1.5 x (largest shard + largest layer), and the round trip is bit-identical."""
from __future__ import annotations

from omni_helpers import assert_bit_identical, read_folder
from test_omni_tools import load_tool


def test_both_directions_stay_within_the_memory_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # importing the tool hides accelerators; undone afterwards
    bench = load_tool("bench_convert")
    cfg = bench.widened_config(hidden=512, ffn=2048, layers=14, vocab=8192, dtype="fp32")
    result = bench.run_benchmark(tmp_path, cfg, "64MB", child_per_direction=False)
    for direction in ("hf_to_megatron", "megatron_to_hf"):
        figures = result[direction]
        assert figures["peak_above_start_bytes"] <= figures["bound_bytes"], (direction, figures)
        # Not the model held whole.
        assert figures["peak_above_start_bytes"] < result["total_bytes"] / 2, (direction, figures)
    assert_bit_identical(read_folder(tmp_path / "back"), read_folder(tmp_path / "hf"))
