"""The data settings as part of the run configuration."""
from __future__ import annotations

import pytest


def test_data_config_loads_from_yaml(tmp_path):
    """DataConfig nests into the run configuration: YAML keys and dotted overrides reach it."""
    from megatron_omni.config import ConfigError, load_config
    from megatron_omni.data.config import DataConfig

    path = tmp_path / "data.yaml"
    path.write_text("video:\n  fps: 1.0\n  min_pixels: 784\n  max_pixels: 12544\n  image_mean: [0.5, 0.5, 0.5]\npacking: true\n")
    cfg = load_config(path, ["prompt.system_prompt=Be brief.", "max_seq_length=2048"], cls=DataConfig)
    cfg.validate("data")
    assert (cfg.video.fps, cfg.video.max_pixels, cfg.video.image_mean) == (1.0, 12544, [0.5, 0.5, 0.5])
    assert cfg.packing and cfg.max_seq_length == 2048 and cfg.prompt.system_prompt == "Be brief."
    with pytest.raises(ConfigError, match="unknown key video.fsp"):
        load_config(None, ["video.fsp=2"], cls=DataConfig)
    with pytest.raises(ConfigError, match="data.video.min_pixels .* exceeds max_pixels"):
        load_config(None, ["video.min_pixels=999999"], cls=DataConfig).validate("data")
