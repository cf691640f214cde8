"""TP=2 and PP=2 parity with transformers (tests/dist/test_omni_parallel.py under torchrun), then
resharding: a TP=2 Megatron checkpoint -> HF reproduces the TP=2 logits, and -> Megatron TP=1
gives back the very same tensors."""
from __future__ import annotations

import shutil

import torch
from omni_helpers import assert_close_on_valid, hf_logits, make_batch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from megatron_omni.convert import convert_hf_to_megatron, convert_megatron_to_hf, load_model_checkpoint, read_model_config
from megatron_omni.models.omni import build_omni_model


def parity_cases(converted) -> list[dict]:
    cases = []
    for use_audio_in_video in (False, True):
        batch = make_batch(converted.hf_model, use_audio_in_video)
        cases.append({"inputs": batch.model_inputs(), "expected": hf_logits(converted.hf_model, batch), "valid": batch.attention_mask.bool()})
    return cases


def load_tp1_state(checkpoint) -> dict[str, torch.Tensor]:
    spec = read_model_config(checkpoint)
    model = build_omni_model(spec.to_config(), omni=spec.omni, initialize=False)
    load_model_checkpoint(checkpoint, [model])
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def test_parallel_parity_and_tp2_resharding(torchrun, converted_thinker, converted_tied_thinker, megatron_world, tmp_path):
    models = {}
    for name, converted in (("untied", converted_thinker), ("tied", converted_tied_thinker)):
        checkpoint = shutil.copytree(converted.megatron_dir, tmp_path / name)
        models[name] = {"checkpoint": checkpoint, "cases": parity_cases(converted)}
    torch.save(models, tmp_path / "cases.pt")

    torchrun("tests/dist/test_omni_parallel.py", nproc=2, extra_env={"OMNI_PARALLEL_DIR": str(tmp_path)})

    # Megatron TP=2 -> HF: transformers reproduces the logits of the TP=2 model.
    hf_dir = convert_megatron_to_hf(tmp_path / "fresh_tp2", tmp_path / "fresh_hf", log=lambda _: None)
    reloaded = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(hf_dir).eval()
    batch = make_batch(converted_thinker.hf_model, use_audio_in_video=False)
    assert_close_on_valid(torch.load(tmp_path / "fresh_tp2_logits.pt"), hf_logits(reloaded, batch), batch)

    # HF -> Megatron, loaded at TP=1: every tensor equals the TP=2 checkpoint loaded at TP=1.
    convert_hf_to_megatron(hf_dir, tmp_path / "back_tp1", log=lambda _: None)
    original, round_trip = load_tp1_state(tmp_path / "fresh_tp2"), load_tp1_state(tmp_path / "back_tp1")
    assert sorted(original) == sorted(round_trip)
    for key, tensor in original.items():
        assert torch.equal(round_trip[key], tensor), key
