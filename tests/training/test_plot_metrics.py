import json

import pytest

from megatron_omni.training.plots import plot_metrics


def test_plot_writes_a_png_and_names_missing_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward_total": 0.1 * s, "lm_loss": 1.0 / s}) + "\n" for s in range(1, 6)))
    png = plot_metrics(path, ["reward_total", "lm_loss"], tmp_path / "out.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError, match=r"no metric \['reward_perc'\]"):
        plot_metrics(path, ["reward_perc"], tmp_path / "x.png")
