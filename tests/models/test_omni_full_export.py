"""Full-model export: a tiny random full Qwen2.5-Omni (thinker + talker + token2wav + spk_dict.pt)
survives HF -> Megatron -> HF bit for bit and still loads and speaks in transformers."""
from __future__ import annotations

import json

import pytest
import torch
from full_omni_helpers import CODEC_END, CODEC_PAD, SPEAKER, save_full_folder, text_prompt
from omni_helpers import assert_bit_identical, read_folder
from transformers import Qwen2_5OmniForConditionalGeneration

from megatron_omni.convert import ConversionError, convert_hf_to_megatron, convert_megatron_to_hf


@pytest.fixture(scope="module")
def full_model(tmp_path_factory, megatron_session):
    """(the released-style folder, its Megatron conversion)."""
    root = tmp_path_factory.mktemp("full")
    hf_dir = save_full_folder(root / "hf")
    logs = []
    convert_hf_to_megatron(hf_dir, root / "megatron", log=logs.append)
    assert any("speech-generation tensors" in line and "--base-model" in line for line in logs)
    return hf_dir, root / "megatron"


def test_full_round_trip_is_bit_identical_and_speaks(full_model, tmp_path):
    hf_dir, megatron_dir = full_model
    source = read_folder(hf_dir)
    assert any(k.startswith("talker.") for k in source) and any(k.startswith("token2wav.") for k in source)
    out = convert_megatron_to_hf(megatron_dir, tmp_path / "out", base_model=hf_dir, max_shard_size="300KB",
                                 log=lambda _: None)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and sorted(index["weight_map"]) == sorted(source)
    assert_bit_identical(read_folder(out), source)
    assert (out / "spk_dict.pt").read_bytes() == (hf_dir / "spk_dict.pt").read_bytes()
    # Serving: the released architecture name and dtype, so transformers and vLLM load it unchanged.
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5OmniForConditionalGeneration"] and config["dtype"] == "float32"

    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(out).eval()
    torch.manual_seed(0)
    text, audio = model.generate(
        input_ids=text_prompt(), attention_mask=torch.ones_like(text_prompt()), speaker=SPEAKER, generation_mode="audio",
        thinker_max_new_tokens=3, thinker_do_sample=False, talker_max_new_tokens=6, talker_do_sample=False,
        talker_eos_token_id=[CODEC_PAD, CODEC_END], token2wav_num_steps=2,
    )
    assert text.shape[1] > text_prompt().shape[1] and audio.dim() == 1 and audio.numel() > 0
    assert bool(torch.isfinite(audio).all())


def test_base_model_of_another_shape_is_refused(full_model, converted_tied_thinker, tmp_path):
    """The tied tiny thinker has no lm_head; the full model's thinker has one."""
    hf_dir, _ = full_model
    with pytest.raises(ConversionError, match=r"first mismatching tensor thinker\.lm_head\.weight: checkpoint absent"):
        convert_megatron_to_hf(converted_tied_thinker.megatron_dir, tmp_path / "out", base_model=hf_dir,
                               log=lambda _: None)
    assert not (tmp_path / "out").exists()
