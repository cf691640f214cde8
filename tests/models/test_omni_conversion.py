"""HF <-> Megatron conversion against transformers' Qwen2.5-Omni thinker (the oracle)."""
from __future__ import annotations

import json

import pytest
import torch
from omni_helpers import (
    assert_bit_identical,
    assert_close_on_valid,
    hf_logits,
    make_batch,
    make_hf_thinker,
    read_folder,
    save_hf_folder,
)
from safetensors.torch import save_file
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from megatron_omni.convert import convert_hf_to_megatron, convert_megatron_to_hf, read_model_config


@pytest.mark.parametrize("use_audio_in_video", [False, True], ids=["separate-audio", "audio-in-video"])
def test_megatron_logits_match_transformers(converted_thinker, omni_model, use_audio_in_video):
    batch = make_batch(converted_thinker.hf_model, use_audio_in_video)
    expected = hf_logits(converted_thinker.hf_model, batch)
    with torch.no_grad():
        actual = omni_model(**batch.model_inputs())
    assert_close_on_valid(actual, expected, batch, atol=1e-4)


def test_model_config_written_beside_checkpoint(converted_thinker):
    spec = read_model_config(converted_thinker.megatron_dir)
    text = converted_thinker.hf_model.config.text_config
    assert (spec.model.hidden_size, spec.model.num_query_groups, spec.model.mrope_section) == (64, 2, [2, 3, 3])
    assert spec.model.vocab_size == text.vocab_size and not spec.model.tie_word_embeddings
    assert spec.omni.tokens.vision_start == 106 and spec.params_dtype == "fp32"
    assert (converted_thinker.megatron_dir / "hf_assets" / "generation_config.json").is_file()


def test_round_trip_is_bit_identical_and_loads_in_transformers(converted_thinker, megatron_world, tmp_path):
    """HF -> Megatron -> HF, written in several shards: same keys, same bits, same logits."""
    logs = []
    out = convert_megatron_to_hf(converted_thinker.megatron_dir, tmp_path / "hf", max_shard_size="300KB", log=logs.append)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert_bit_identical(read_folder(out), read_folder(converted_thinker.hf_dir))
    assert (out / "generation_config.json").is_file() and any("wrote shard" in line for line in logs)

    reloaded = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out).eval()
    batch = make_batch(converted_thinker.hf_model, use_audio_in_video=False)
    torch.testing.assert_close(hf_logits(reloaded, batch), hf_logits(converted_thinker.hf_model, batch), atol=0, rtol=0)


def test_tied_embeddings_round_trip_without_lm_head(converted_tied_thinker, megatron_world, tmp_path):
    source = read_folder(converted_tied_thinker.hf_dir)
    assert "lm_head.weight" not in source
    spec = read_model_config(converted_tied_thinker.megatron_dir)
    assert spec.model.tie_word_embeddings
    out = convert_megatron_to_hf(converted_tied_thinker.megatron_dir, tmp_path / "hf", log=lambda _: None)
    assert_bit_identical(read_folder(out), source)
    reloaded = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()


def test_bf16_checkpoint_keeps_its_dtype(megatron_world, tmp_path):
    hf_model = make_hf_thinker(seed=2).to(torch.bfloat16)
    hf_dir = save_hf_folder(hf_model, tmp_path / "hf")
    convert_hf_to_megatron(hf_dir, tmp_path / "megatron", log=lambda _: None)
    assert read_model_config(tmp_path / "megatron").params_dtype == "bf16"
    out = convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "back", log=lambda _: None)
    assert_bit_identical(read_folder(out), read_folder(hf_dir))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_sharded_full_checkpoint_with_thinker_prefix(converted_thinker, megatron_world, tmp_path):
    """A released-style folder: 'thinker.' keys over an index of shards, plus talker/token2wav
    weights left in the folder with a message; without a base model the export is the thinker."""
    source = read_folder(converted_thinker.hf_dir)
    folder = tmp_path / "full"
    folder.mkdir()
    keys = sorted(source)
    half = len(keys) // 2
    halves = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, part in halves.items():
        tensors = {f"thinker.{k}": source[k] for k in part}
        if name.startswith("model-00002"):
            tensors.update({"talker.codec_head.weight": torch.zeros(4, 4), "token2wav.code_embed.weight": torch.zeros(2, 2)})
        save_file(tensors, str(folder / name))
        weight_map.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    thinker_config = json.loads((converted_thinker.hf_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni", "thinker_config": thinker_config}))
    assets = {"tokenizer_config.json": '{"model_max_length": 32768}', "preprocessor_config.json": '{"sampling_rate": 16000}'}
    for name, text in assets.items():
        (folder / name).write_text(text)

    logs = []
    convert_hf_to_megatron(folder, tmp_path / "megatron", log=logs.append)
    assert any("2 speech-generation tensors" in line and f"--base-model {folder}" in line for line in logs)
    assert any("from 2 safetensors file(s)" in line for line in logs)
    assert sorted(p.name for p in (tmp_path / "megatron" / "hf_assets").iterdir()) == sorted(assets)
    out = convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "back", log=lambda _: None)
    assert_bit_identical(read_folder(out), source)
    assert all((out / name).read_text() == text for name, text in assets.items())
