"""HF <-> Megatron conversion of the Qwen3-Omni MoE thinker against transformers' own module and
checkpoint files (the oracle): per-expert keys on disk, experts on an expert axis in the Megatron
checkpoint, full released-style folders kept whole."""
from __future__ import annotations

import json

import pytest
import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from moe_helpers import TEXT, make_hf_moe_thinker
from omni_helpers import assert_bit_identical, make_hf_thinker, read_folder, save_hf_folder
from safetensors.torch import save_file
from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

from megatron_omni.convert import ConversionError, convert_hf_to_megatron, convert_megatron_to_hf, read_model_config
from megatron_omni.convert.megatron_checkpoint import checkpoint_iteration_dir

LAYERS, NUM_EXPERTS = TEXT["num_hidden_layers"], TEXT["num_experts"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, megatron_session):
    """(the tiny thinker, its HF folder, its Megatron conversion)."""
    root = tmp_path_factory.mktemp("qwen3")
    hf_model = make_hf_moe_thinker(seed=3)
    hf_dir = save_hf_folder(hf_model, root / "hf")
    convert_hf_to_megatron(hf_dir, root / "megatron", log=lambda _: None)
    return hf_model, hf_dir, root / "megatron"


def _stored(folder, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One whole tensor of a Megatron checkpoint, by its checkpoint key and global shape."""
    request = {key: ShardedTensor.from_rank_offsets(key, torch.empty(shape))}
    return dist_checkpointing.load(request, str(checkpoint_iteration_dir(folder)), validate_access_integrity=False)[key]


def test_model_description_and_experts_on_an_expert_axis(converted):
    """The stored MoE layers, read back with megatron's own loader, hold transformers' tensors at
    their expert index: the router is HF's gate, fc1 of expert e is [gate_e; up_e], fc2 is down_e.
    (A round trip alone would not see experts swapped consistently both ways.)"""
    _, hf_dir, megatron_dir = converted
    spec = read_model_config(megatron_dir).model
    assert spec.family == "qwen3_omni_moe" and (spec.num_moe_experts, spec.moe_router_topk) == (NUM_EXPERTS, 2)
    assert (spec.kv_channels, spec.moe_ffn_hidden_size, spec.qk_layernorm, spec.add_qkv_bias) == (16, 32, True, False)
    assert spec.mrope_interleaved and spec.moe_norm_topk_prob and spec.moe_aux_loss_coeff == pytest.approx(0.001)
    hf = read_folder(hf_dir)
    prefix = "language_model.decoder.layers."
    fc1 = _stored(megatron_dir, f"{prefix}mlp.experts.experts.linear_fc1.weight", (LAYERS, NUM_EXPERTS, 64, 64))
    fc2 = _stored(megatron_dir, f"{prefix}mlp.experts.experts.linear_fc2.weight", (LAYERS, NUM_EXPERTS, 64, 32))
    router = _stored(megatron_dir, f"{prefix}mlp.router.weight", (LAYERS, NUM_EXPERTS, 64))
    q_norm = _stored(megatron_dir, f"{prefix}self_attention.q_layernorm.weight", (LAYERS, 16))
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        assert torch.equal(router[i], hf[f"{layer}mlp.gate.weight"])
        assert torch.equal(q_norm[i], hf[f"{layer}self_attn.q_norm.weight"])
        for e in range(NUM_EXPERTS):
            expert = f"{layer}mlp.experts.{e}."
            gate_up = torch.cat([hf[f"{expert}gate_proj.weight"], hf[f"{expert}up_proj.weight"]])
            assert torch.equal(fc1[i, e], gate_up) and torch.equal(fc2[i, e], hf[f"{expert}down_proj.weight"])


def test_round_trip_is_bit_identical_and_loads_in_transformers(converted, megatron_world, tmp_path):
    """HF -> Megatron -> HF in several shards: the same per-expert keys and bits (DeepStack mergers
    and both towers included), a config transformers builds the same thinker from."""
    hf_model, hf_dir, megatron_dir = converted
    out = convert_megatron_to_hf(megatron_dir, tmp_path / "hf", max_shard_size="300KB", log=lambda _: None)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    source = read_folder(hf_dir)
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in source and "visual.merger_list.1.mlp.2.weight" in source
    assert_bit_identical(read_folder(out), source)

    reloaded = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(out).eval()
    ours, theirs = reloaded.config.to_dict(), hf_model.config.to_dict()
    for sub in ("text_config", "vision_config", "audio_config"):
        differing = {k for k, v in theirs[sub].items() if ours[sub].get(k) != v}
        assert differing <= {"dtype"}, (sub, differing)  # our export names its dtype
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3OmniMoeThinkerForConditionalGeneration"]
    ids = torch.arange(2, 26).reshape(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, hf_model(input_ids=ids).logits, atol=0, rtol=0)


def _released_folder(hf_dir, folder) -> dict[str, torch.Tensor]:
    """A released-style full folder around the thinker: ``thinker.`` keys in two shards over an
    index, talker and code2wav weights, config.json with the thinker_config inside."""
    folder.mkdir()
    source = {f"thinker.{k}": t for k, t in read_folder(hf_dir).items()}
    source.update({"talker.codec_head.weight": torch.randn(4, 4), "code2wav.code_embedding.weight": torch.randn(2, 2)})
    keys = sorted(source)
    weight_map = {}
    for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), start=1):
        name = f"model-0000{n}-of-00002.safetensors"
        save_file({k: source[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    thinker_config = json.loads((hf_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe", "thinker_config": thinker_config,
                                                    "architectures": ["Qwen3OmniMoeForConditionalGeneration"]}))
    return source


def test_full_folder_is_kept_whole(converted, megatron_world, tmp_path):
    _, hf_dir, _ = converted
    source = _released_folder(hf_dir, tmp_path / "full")
    logs = []
    convert_hf_to_megatron(tmp_path / "full", tmp_path / "megatron", log=logs.append)
    assert any("2 speech-generation tensors" in line for line in logs)
    out = convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "out", base_model=tmp_path / "full", log=lambda _: None)
    assert_bit_identical(read_folder(out), source)
    assert (out / "config.json").read_text() == (tmp_path / "full" / "config.json").read_text()

    # A base model of the other family is refused before anything is written.
    qwen25 = save_hf_folder(make_hf_thinker(seed=0), tmp_path / "qwen25")
    with pytest.raises(ConversionError, match="qwen2_5_omni model, but the checkpoint .* holds a qwen3_omni_moe thinker"):
        convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "bad", base_model=qwen25, log=lambda _: None)
    assert not (tmp_path / "bad").exists()


def test_checkpoint_of_another_model_is_refused(converted, tmp_path):
    """Qwen2.5-Omni weights under a Qwen3-Omni config.json: the dense MLP and QKV-bias keys are
    named as unexpected, the experts, router and q/k norms as missing."""
    _, hf_dir, _ = converted
    folder = save_hf_folder(make_hf_thinker(seed=0), tmp_path / "mixed")
    (folder / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(ConversionError) as info:
        convert_hf_to_megatron(folder, tmp_path / "out", log=lambda _: None)
    message = str(info.value)
    assert "missing key(s)" in message and "model.layers.0.mlp.experts.0.gate_proj.weight" in message
    assert "unexpected key(s)" in message and "model.layers.0.mlp.gate_proj.weight" in message
    assert "model.layers.0.self_attn.q_proj.bias" in message and not (tmp_path / "out").exists()
