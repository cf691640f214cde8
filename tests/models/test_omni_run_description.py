"""What a training run writes into train.save_dir at start so the exporter can read it:
omni_model.yaml and hf_assets/, from a converted init_from or else from the run's own config."""
from __future__ import annotations

from megatron_omni.convert import OmniModelConfig, read_model_config
from megatron_omni.convert.megatron_checkpoint import describe_run_checkpoints


def test_run_from_a_converted_checkpoint_carries_its_description(converted_thinker, tmp_path):
    source = converted_thinker.megatron_dir
    describe_run_checkpoints(tmp_path / "save", OmniModelConfig(), init_from=source / "iter_0000000",
                             tokenizer_dir=None)
    assert (tmp_path / "save" / "omni_model.yaml").read_text() == (source / "omni_model.yaml").read_text()
    assets = sorted(p.name for p in (source / "hf_assets").iterdir())
    assert sorted(p.name for p in (tmp_path / "save" / "hf_assets").iterdir()) == assets


def test_run_from_other_weights_describes_its_own_model(converted_thinker, tmp_path):
    own = read_model_config(converted_thinker.megatron_dir)
    own.params_dtype = "bf16"
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    describe_run_checkpoints(tmp_path / "save", own, init_from=tmp_path / "not-converted", tokenizer_dir=tokenizer)
    assert read_model_config(tmp_path / "save") == own
    assert [p.name for p in (tmp_path / "save" / "hf_assets").iterdir()] == ["tokenizer_config.json"]
