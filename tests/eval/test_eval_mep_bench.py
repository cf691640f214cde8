"""MEP-Bench-style utilization and faithfulness with a fake generator and a bag-of-words encoder."""
import hashlib
import json
import re

import pytest
import torch
from evaluate_cli import evaluate_tool
from fake_llm_server import FakeChatServer

from megatron_omni.eval.llm_endpoint import ChatEndpoint, EndpointConfig
from megatron_omni.eval.mep_bench import KeywordClaimExtractor, LLMClaimExtractor, run_mep_bench


class BagOfWordsEncoder:
    """Cosine = shared-word overlap, so every expected figure below can be worked out by hand."""

    def __init__(self, dim=4096):
        self.dim = dim
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        rows = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                rows[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        return torch.nn.functional.normalize(rows, dim=1)


SAMPLES = [
    {"id": "s1", "extracted_clues": {"visual_clues": ["furrowed brows"], "audio_clues": ["trembling voice"]}},
    {"id": "s2", "extracted_clues": {"visual_clues": ["wide smile"], "audio_clues": []}},
]
OUTPUTS = {
    None: ["<think>He has furrowed brows, the sky is blue. His trembling voice shows fear.</think><answer>fear</answer>",
           "<think>The face looks calm.</think><answer>calm</answer>"],
    "visual": ["<think>His trembling voice shows fear. He has furrowed brows.</think><answer>fear</answer>",
               "<think>Nothing to report here.</think><answer>calm</answer>"],
    "audio": ["<think>He has furrowed brows, his voice is loud.</think><answer>anger</answer>",
              "<think>The face looks calm.</think><answer>calm</answer>"],
}


def fake_generate(samples, mask_modality=None):
    assert [s["id"] for s in samples] == ["s1", "s2"]
    return OUTPUTS[mask_modality]


def test_utilization_and_faithfulness_hand_computed():
    encoder = BagOfWordsEncoder()
    result = run_mep_bench(SAMPLES, fake_generate, KeywordClaimExtractor(), encoder)
    utilization = result.utilization
    # "He has furrowed brows" ~ "furrowed brows": 2/sqrt(8) = 0.71; "His trembling voice shows fear"
    # ~ "trembling voice": 2/sqrt(10) = 0.63; "wide smile" is never mentioned.
    assert utilization.recall == {"visual": 0.5, "audio": 1.0}
    assert utilization.cues == {"visual": 2, "audio": 1}
    # visual claims: "He has furrowed brows" (supported), "The face looks calm" (no such cue)
    assert utilization.precision == {"visual": 0.5, "audio": 1.0}
    assert utilization.mean_recall == 0.75 and utilization.mean_precision == 0.75
    assert encoder.calls == 1  # every string of the set embedded in one call
    faithfulness = result.faithfulness
    # visual masked: claims [audio, visual | none] -> 1/3; sentences 1 of 3
    # audio masked: claims [visual, audio | visual] -> 1/3; sentences 1 of 2
    assert faithfulness.claim_level == {"visual": pytest.approx(1 / 3), "audio": pytest.approx(1 / 3)}
    assert faithfulness.sentence_level == {"visual": pytest.approx(1 / 3), "audio": pytest.approx(1 / 2)}


def test_keyword_extractor_tags_both_modalities_in_one_clause():
    claims = KeywordClaimExtractor()("Her eyes widen and her voice rises. Clearly upset")
    assert [sorted(c.modalities) for c in claims] == [["audio", "visual"], []]
    assert [c.sentence for c in claims] == [0, 1]


def test_llm_claim_extractor_parses_tagged_lines():
    reply = "1 | visual | brows are furrowed\n2 | Audio | voice trembles\n1 | both | shaking\n9 | audio | x\nnoise"
    with FakeChatServer(lambda prompt: reply) as server:
        extractor = LLMClaimExtractor(ChatEndpoint(EndpointConfig(url=server.url, model="m")))
        claims = extractor("His brows are furrowed. His voice trembles.")
        assert "1. His brows are furrowed\n2. His voice trembles" in server.prompts[0]
    assert [(c.sentence, sorted(c.modalities), c.text) for c in claims] == [
        (0, ["visual"], "brows are furrowed"), (1, ["audio"], "voice trembles"), (0, ["audio", "visual"], "shaking")]
    assert extractor("") == []


def _claim_reply(prompt):
    """A stand-in LLM: for each numbered sentence, a visual claim when it names brows or a face, an
    audio claim when it names a voice, else one claim about something else."""
    lines = []
    for number, sentence in re.findall(r"^(\d+)\. (.+)$", prompt, re.M):
        tags = [tag for tag, words in (("visual", ("brows", "face")), ("audio", ("voice",)))
                if any(w in sentence for w in words)] or ["other"]
        lines += [f"{number} | {tag} | {sentence}" for tag in tags]
    return "\n".join(lines)


def test_mep_command_line_generates_resumes_and_scores_from_files(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES), encoding="utf-8")
    masks = []

    def generate(samples, mask_modality=None):
        masks.append(mask_modality)
        return fake_generate(samples, mask_modality)

    out = tmp_path / "out"
    with FakeChatServer(_claim_reply) as server:
        argv = ["mep", "--manifest", str(manifest), "--out-dir", str(out), "--claims", "llm",
                "--llm-url", server.url, "--llm-model", "m"]
        summary = evaluate_tool.main(argv, generate=generate, encoder=BagOfWordsEncoder())
        assert masks == [None, "visual", "audio"]
        calls = len(server.prompts)
        assert calls == 5  # one per distinct reasoning text ("The face looks calm." twice)
        assert evaluate_tool.main(argv, generate=generate, encoder=BagOfWordsEncoder()) == summary
        assert masks == [None, "visual", "audio"] and len(server.prompts) == calls  # resumed and cached
    utilization, faithfulness = summary["utilization"], summary["faithfulness"]
    # LLM claims are whole sentences: "He has furrowed brows, the sky is blue" ~ "furrowed brows" is
    # 2/sqrt(16) = 0.5 (no match), "The face looks calm" matches no cue; "His trembling voice shows
    # fear" ~ "trembling voice" 2/sqrt(10) = 0.63. Recall reads clauses, as in the library test.
    assert utilization["precision"] == {"visual": 0.0, "audio": 1.0}
    assert utilization["recall"] == {"visual": 0.5, "audio": 1.0}
    assert faithfulness["claim_level"] == {"visual": pytest.approx(1 / 3), "audio": pytest.approx(1 / 3)}
    assert faithfulness["sentence_level"] == {"visual": pytest.approx(1 / 3), "audio": pytest.approx(1 / 2)}
    assert "| recall | 50.00 | 100.00 | 75.00 |" in (out / "mep.md").read_text()

    # From the output files alone (no model), with the offline claim extractor: the library figures.
    files = ["--outputs", str(out / "mep_outputs.jsonl"), "--visual-masked", str(out / "mep_outputs_visual_masked.jsonl"),
             "--audio-masked", str(out / "mep_outputs_audio_masked.jsonl")]
    offline = evaluate_tool.main(["mep", "--manifest", str(manifest), "--out-dir", str(tmp_path / "files"), *files],
                                 encoder=BagOfWordsEncoder())
    expected = run_mep_bench(SAMPLES, fake_generate, KeywordClaimExtractor(), BagOfWordsEncoder()).summary()
    assert {k: offline[k] for k in expected} == expected
    with pytest.raises(SystemExit, match="no outputs file"):
        evaluate_tool.main(["mep", "--manifest", str(manifest), "--out-dir", str(tmp_path / "none")])
    words_only = tmp_path / "words.jsonl"
    words_only.write_text('{"id": "s1", "answer": ["fear"]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"words.jsonl, line 1: no raw 'output' text"):
        evaluate_tool.main(["mep", "--manifest", str(manifest), "--out-dir", str(tmp_path / "w"), *files[:-1],
                            str(words_only)], encoder=BagOfWordsEncoder())
