"""Bad checkpoints give one clear error naming the file and the keys, and leave no output behind."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import megatron_omni.convert.megatron_checkpoint as megatron_checkpoint
from megatron_omni.convert import ConversionError, convert_hf_to_megatron, convert_megatron_to_hf


@pytest.fixture
def hf_copy(converted_thinker, tmp_path):
    """A private copy of the tiny HF thinker folder, free to damage."""
    return shutil.copytree(converted_thinker.hf_dir, tmp_path / "hf")


def edit_weights(folder, edit) -> None:
    path = folder / "model.safetensors"
    with safe_open(path, framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    edit(tensors)
    save_file(tensors, str(path))


def edit_config(folder, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def convert_fails(hf_dir, out_dir, *fragments: str) -> str:
    with pytest.raises(ConversionError) as info:
        convert_hf_to_megatron(hf_dir, out_dir, log=lambda _: None)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert_nothing_written(out_dir)
    return message


def assert_nothing_written(out_dir) -> None:
    assert not out_dir.exists()
    assert not [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}")]


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64},
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
        {"architectures": ["SomethingElse"]},
    ],
    ids=["qwen2-text-only", "llama", "no-model-type"],
)
def test_other_architectures_are_refused(hf_copy, tmp_path, config):
    (hf_copy / "config.json").write_text(json.dumps(config))
    convert_fails(hf_copy, tmp_path / "out", "config.json", "is not a thinker this converter reads",
                  repr(config.get("model_type")))


def test_missing_key_is_listed(hf_copy, tmp_path, megatron_session):
    edit_weights(hf_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    convert_fails(hf_copy, tmp_path / "out", str(hf_copy), "1 missing key(s)", "model.layers.1.mlp.up_proj.weight")


def test_unexpected_key_is_listed(hf_copy, tmp_path, megatron_session):
    edit_weights(hf_copy, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(128, 64)}))
    convert_fails(hf_copy, tmp_path / "out", "1 unexpected key(s)", "model.layers.2.mlp.up_proj.weight")


def test_shape_mismatch_is_listed(hf_copy, tmp_path, megatron_session):
    edit_config(hf_copy, lambda c: c["text_config"].update(intermediate_size=96))
    message = convert_fails(hf_copy, tmp_path / "out", "shape mismatch(es)")
    assert "model.layers.0.mlp.gate_proj.weight: checkpoint [128, 64], expected [96, 64]" in message
    assert "model.layers.1.mlp.down_proj.weight: checkpoint [64, 128], expected [64, 96]" in message


def test_tied_config_with_an_lm_head_is_explained(hf_copy, tmp_path, megatron_session):
    edit_config(hf_copy, lambda c: c.update(tie_word_embeddings=True))
    convert_fails(hf_copy, tmp_path / "out", "unexpected key(s)", "lm_head.weight", "tie_word_embeddings=true")


def test_untied_config_without_lm_head_is_explained(hf_copy, tmp_path, megatron_session):
    edit_weights(hf_copy, lambda t: t.pop("lm_head.weight"))
    convert_fails(hf_copy, tmp_path / "out", "missing key(s)", "lm_head.weight", "tie_word_embeddings=false")


def test_folder_without_safetensors(hf_copy, tmp_path):
    (hf_copy / "model.safetensors").rename(hf_copy / "pytorch_model.bin")
    convert_fails(hf_copy, tmp_path / "out", "no safetensors weights", "pytorch_model.bin")


def test_index_naming_a_missing_shard(hf_copy, tmp_path):
    (hf_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    convert_fails(hf_copy, tmp_path / "out", "model.safetensors.index.json", "model-00001-of-00002.safetensors")


def test_existing_output_is_not_overwritten_unless_asked(converted_thinker, tmp_path, megatron_session):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        convert_hf_to_megatron(converted_thinker.hf_dir, out, log=lambda _: None)
    convert_hf_to_megatron(converted_thinker.hf_dir, out, overwrite=True, log=lambda _: None)
    assert (out / "latest").is_file()


def test_failed_save_leaves_no_partial_folder(converted_thinker, tmp_path, megatron_session, monkeypatch):
    def disk_full(folder, *args, **kwargs):
        (folder / "half-written").write_text("x")
        raise OSError("No space left on device")

    monkeypatch.setattr(megatron_checkpoint, "save_streamed", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_hf_to_megatron(converted_thinker.hf_dir, tmp_path / "out", log=lambda _: None)
    assert_nothing_written(tmp_path / "out")


def test_megatron_folder_without_model_config(converted_thinker, tmp_path):
    shutil.copytree(converted_thinker.megatron_dir, tmp_path / "megatron")
    (tmp_path / "megatron" / "omni_model.yaml").unlink()
    with pytest.raises(ConversionError, match="no omni_model.yaml"):
        convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "hf", log=lambda _: None)
    assert_nothing_written(tmp_path / "hf")


@pytest.mark.parametrize(
    "edit, message",
    [
        (("num_layers:", "num_layerz:"), r"omni_model.yaml: unknown key model.num_layerz"),
        (("ffn_hidden_size: 128", "ffn_hidden_size: 96"),
         r"does not hold the model .*omni_model.yaml describes: .*linear_fc1.weight"),
    ],
    ids=["unknown-key", "weights-of-another-shape"],
)
def test_megatron_model_config_problems(converted_thinker, tmp_path, megatron_session, edit, message):
    shutil.copytree(converted_thinker.megatron_dir, tmp_path / "megatron")
    config = tmp_path / "megatron" / "omni_model.yaml"
    config.write_text(config.read_text().replace(*edit))
    with pytest.raises(ConversionError, match=message):
        convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "hf", log=lambda _: None)
    assert_nothing_written(tmp_path / "hf")
