"""The Omni-Perception Reward on the fixture lexicon, real EMER descriptions and the OPPO sample."""
import csv
import json
import random
import re

import pytest
import torch

from megatron_omni.eval.mep_bench import KeywordClaimExtractor
from megatron_omni.rewards.config import RewardConfig
from megatron_omni.rewards.cue_recovery import classify_sentences, cue_scores
from megatron_omni.rewards.emotion_wheel_f1 import emotion_wheel_f1
from megatron_omni.rewards.omni_perception import OmniPerceptionReward
from megatron_omni.text.lexicon import EmotionWheelLexicon


def sample(openset, visual=(), audio=(), emotions=()):
    return {"openset": list(openset), "extracted_clues": {
        "visual_clues": list(visual), "audio_clues": list(audio), "reasoning_emotions": list(emotions)}}


def test_emotion_wheel_f1_hand_computed(fixture_wheel_dir):
    lexicon = EmotionWheelLexicon.from_dir(fixture_wheel_dir)
    # wheel1: truth {happy, sad} pred {happy, sad} -> 1; wheel2: truth {joy} pred {anger} -> 0
    assert emotion_wheel_f1(["thrilling", "upset"], ["merriment", "alone"], lexicon) == pytest.approx(0.5)
    # wheel2 skipped: 'alone' does not map there, so only wheel1 counts
    assert emotion_wheel_f1(["thrilling", "upset"], ["thrilling", "alone"], lexicon) == pytest.approx(1.0)
    # wheel1: truth {sad} pred {happy, sad}: P 1/2 R 1 F 2/3; wheel2: truth {anger} pred {anger, joy}: 2/3
    assert emotion_wheel_f1(["thrilling", "upset", "calmly"], ["upset"], lexicon) == pytest.approx(2 / 3)
    # wheel1: truth {sad} pred {happy}: 0; wheel2: truth {anger} pred {joy}: 0
    assert emotion_wheel_f1(["calmly"], ["upset"], lexicon) == 0.0
    assert emotion_wheel_f1([], ["upset"], lexicon) == 0.0
    assert emotion_wheel_f1(["upset"], ["pleased"], lexicon) == 0.0  # truth maps on no wheel


def test_cue_score_formula():
    sentences = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    cues = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    # best cosines 1.0, 0.8, 0.0 -> relu(c - 0.5) / 0.5
    assert cue_scores(sentences, cues, 0.5).tolist() == pytest.approx([1.0, 0.6, 0.0])
    assert cue_scores(torch.zeros(0, 2), cues).tolist() == [0.0, 0.0, 0.0]
    assert classify_sentences(sentences, cues[:1], cues[1:2]) == ["visual", "audio"]
    assert classify_sentences(sentences, torch.zeros(0, 2), cues[:1]) == ["audio", "audio"]


def test_reward_terms_weights_and_one_encode_call(fixture_wheel_dir, encoder):
    config = RewardConfig(str(fixture_wheel_dir), weight_ew=2.0, weight_format=0.5,
                                        weight_perc=0.25, weight_coh=1.0)
    reward = OmniPerceptionReward(config, encoder=encoder)
    target = sample(["upset"], visual=["furrowed brows"], audio=["trembling voice"], emotions=["disappointment"])
    completions = [
        "<think>He has furrowed brows. His voice is trembling. He feels deep disappointment.</think><answer>upset</answer>",
        "<think>He has furrowed brows. His voice is trembling. He feels deep disappointment.</think> <answer>upset</answer>",
        "The weather is sunny <answer>thrilling</answer>",
    ]
    out = reward.compute(completions, [target] * 3)
    assert encoder.calls == 1 and encoder.strings == 3 + 1 + 3  # unique sentences + cues, once
    assert out["ew"].tolist() == [1.0, 1.0, 0.0]
    assert out["format"].tolist() == [1.0, 1.0, 0.0]
    assert out["perc"][0] > 0.5 and out["coh"][0] > 0.3 and out["perc"][2] < out["perc"][0] / 2
    total = 2.0 * out["ew"] + 0.5 * out["format"] + 0.25 * out["perc"] + 1.0 * out["coh"]
    assert torch.allclose(out["total"], total)
    assert all(v.dtype == torch.float32 and v.shape == (3,) for v in out.values())


def test_reward_input_errors_name_the_sample(fixture_wheel_dir, encoder):
    reward = OmniPerceptionReward(RewardConfig(str(fixture_wheel_dir)), encoder=encoder)
    with pytest.raises(KeyError, match="sample 1: missing field 'openset'"):
        reward.compute(["a", "b"], [sample(["x"]), {"extracted_clues": {}}])
    with pytest.raises(TypeError, match="sample 0: extracted_clues.audio_clues"):
        reward.compute(["a"], [{"openset": [], "extracted_clues": {"audio_clues": "loud"}}])
    with pytest.raises(ValueError, match="2 completions but 1 samples"):
        reward.compute(["a", "b"], [sample(["x"])])


def test_evidence_sentences_map_to_completion_offsets(fixture_wheel_dir, encoder):
    reward = OmniPerceptionReward(RewardConfig(str(fixture_wheel_dir)), encoder=encoder)
    completion = "<think>He has deeply furrowed brows. His voice is trembling. It rains.</think><answer>upset</answer>"
    spans = reward.evidence_sentences(completion, sample(["upset"], ["furrowed brows"], ["trembling voice"]))
    assert [(completion[s.start:s.end], s.modality) for s in spans] == [
        ("He has deeply furrowed brows", "visual"), ("His voice is trembling", "audio"), ("It rains", "neutral")]


@pytest.fixture
def emer_samples(shared_data):
    with open(shared_data / "emer" / "emer_descriptions_332.csv", encoding="utf-8") as handle:
        descriptions = {r["name"]: r["english"] for r in csv.DictReader(handle)}
    with open(shared_data / "mer_unibench" / "ovmerd_labels_332.csv", encoding="utf-8") as handle:
        opensets = {r["name"]: r["openset"] for r in csv.DictReader(handle)}
    # Cues: the clauses the description spends on what is seen or heard, less their first two
    # words, so a cue is a fragment of its own description, never a whole clause of it.
    extractor = KeywordClaimExtractor()
    samples = []
    for name in sorted(descriptions)[:12]:
        claims = extractor(descriptions[name])
        cues = {m: [" ".join(c.text.split()[2:]) for c in claims if c.modalities == {m} and len(c.text.split()) >= 5
                    and not re.search(r"\b(video|audio|clues?)\b", c.text, re.IGNORECASE)][:3]
                for m in ("visual", "audio")}
        samples.append((descriptions[name], sample(opensets[name], cues["visual"], cues["audio"])))
    return samples


def test_real_description_recovers_its_own_cues(shared_data, emer_samples, encoder, tmp_path):
    reward = OmniPerceptionReward(RewardConfig(str(shared_data / "emotion_wheel")), encoder=encoder)
    descriptions = [d for d, _ in emer_samples]
    targets = [s for _, s in emer_samples]
    rotated = descriptions[1:] + descriptions[:1]  # each sample paired with another clip's description
    own = reward.compute([f"<think>{d}</think><answer>happy</answer>" for d in descriptions], targets)["perc"]
    other = reward.compute([f"<think>{d}</think><answer>happy</answer>" for d in rotated], targets)["perc"]
    assert own.mean() > 0.6
    assert own.mean() - other.mean() > 0.25
    assert (own > other).float().mean() >= 0.9


def test_oppo_sample_own_clues_beat_shuffled_ones(shared_data, encoder):
    with open(shared_data / "oppo_rl_sample.jsonl", encoding="utf-8") as handle:
        samples = [json.loads(line) for line in handle]
    reward = OmniPerceptionReward(RewardConfig(str(shared_data / "emotion_wheel")), encoder=encoder)

    def completion(record):
        clues = record["extracted_clues"]
        think = (f"I notice {', '.join(clues['visual_clues']) or 'little movement'}. "
                 f"I hear {', '.join(clues['audio_clues'])}. The person seems {', '.join(clues['reasoning_emotions'])}.")
        return f"<think>{think}</think> <answer>{', '.join(record['openset'])}</answer>"

    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    shuffled = shuffled[1:] + shuffled[:1] if any(a is b for a, b in zip(shuffled, samples)) else shuffled
    own = reward.compute([completion(s) for s in samples], samples)
    other = reward.compute([completion(s) for s in shuffled], samples)
    assert own["format"].tolist() == [1.0] * len(samples)
    assert own["ew"].min() == 1.0  # the answer is the ground-truth open set
    assert own["perc"].mean() > 0.6 and own["coh"].mean() > 0.6
    assert own["perc"].mean() > other["perc"].mean() + 0.2
    assert own["total"].mean() > other["total"].mean()
