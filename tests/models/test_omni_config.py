"""The omni configuration: defaults consistent with the tiny decoder, cross-field errors naming
the key, and the model description file beside checkpoints."""
from __future__ import annotations

import pytest

from megatron_omni.config import ConfigError
from megatron_omni.convert import OmniModelConfig, read_model_config, write_model_config
from megatron_omni.models.config import ModelConfig
from megatron_omni.models.omni_config import OmniConfig, validate_omni


def test_defaults_fit_the_default_decoder():
    validate_omni(ModelConfig(), OmniConfig())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: setattr(o.vision, "out_hidden_size", 32),
         r"omni.vision.out_hidden_size \(32\) must equal model.hidden_size \(64\)"),
        (lambda o: setattr(o.audio, "output_dim", 48), r"omni.audio.output_dim \(48\) must equal model.hidden_size"),
        (lambda o: setattr(o.vision, "num_heads", 3),
         r"omni.vision.hidden_size \(32\) must be divisible by omni.vision.num_heads"),
        (lambda o: setattr(o.audio, "encoder_attention_heads", 5), r"omni.audio.d_model \(32\) must be divisible"),
        (lambda o: setattr(o.vision, "fullatt_block_indexes", [1, 2]), r"omni.vision.fullatt_block_indexes \[2\] outside 0..1"),
        (lambda o: setattr(o.tokens, "video", 151656), r"omni.tokens.video \(151656\) must lie in 0..model.vocab_size-1 \(511\)"),
        (lambda o: setattr(o.tokens, "audio", o.tokens.video), r"omni.tokens must be distinct"),
        (lambda o: setattr(o, "modality_mask_ratio", 1.5), r"omni.modality_mask_ratio \(1.5\) must lie in \[0, 1\]"),
    ],
)
def test_inconsistent_settings_name_the_key(change, message):
    omni = OmniConfig()
    change(omni)
    with pytest.raises(ConfigError, match=message):
        validate_omni(ModelConfig(), omni)


def test_one_dimensional_rope_is_refused():
    with pytest.raises(ConfigError, match="model.mrope_section must be set"):
        validate_omni(ModelConfig(mrope_section=None), OmniConfig())


def test_model_config_file_round_trip(tmp_path):
    cfg = OmniModelConfig(params_dtype="bf16")
    cfg.omni.freeze_vision = True
    cfg.omni.vision.fullatt_block_indexes = [0, 1]
    write_model_config(tmp_path, cfg)
    assert read_model_config(tmp_path) == cfg
    assert read_model_config(tmp_path / "iter_0000000") == cfg  # found from an iteration folder too


def test_model_config_file_type_errors_name_file_and_key(tmp_path):
    write_model_config(tmp_path, OmniModelConfig())
    path = tmp_path / "omni_model.yaml"
    path.write_text(path.read_text().replace("freeze_audio: false", "freeze_audio: maybe"))
    with pytest.raises(ConfigError, match=r"omni_model.yaml: omni.freeze_audio: expected true/false, got 'maybe'"):
        read_model_config(tmp_path)
