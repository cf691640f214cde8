"""LLM-endpoint paths against a local HTTP server: client, valence, answer parsing, MME-Emotion."""
import re

import pytest
from fake_llm_server import FakeChatServer

from megatron_omni.eval.answers import AnswerWordExtractor
from megatron_omni.eval.llm_endpoint import ChatEndpoint, EndpointConfig, EndpointError
from megatron_omni.eval.mme_emotion import MMEEmotionItem, MMEEmotionScorer, parse_steps
from megatron_omni.eval.valence import LLMValence


def endpoint(server, tmp_path=None, **overrides):
    cache = str(tmp_path / "cache.jsonl") if tmp_path else None
    return ChatEndpoint(EndpointConfig(url=server.url, model="judge", cache_path=cache, backoff_s=0.01, **overrides))


def test_client_sends_openai_payload_and_caches(tmp_path):
    with FakeChatServer(lambda prompt: f"echo {prompt}") as server:
        client = endpoint(server, tmp_path)
        assert client.complete("hello", system="be brief") == "echo hello"
        assert client.complete("hello", system="be brief") == "echo hello"
        assert server.payloads[0]["model"] == "judge"
        assert server.payloads[0]["messages"][0] == {"role": "system", "content": "be brief"}
        assert len(server.prompts) == 1
        rerun = endpoint(server, tmp_path)  # a new process reading the cache file
        assert rerun.complete("hello", system="be brief") == "echo hello"
        assert rerun.calls == 0 and len(server.prompts) == 1


def test_client_retries_transient_errors_then_succeeds():
    outcomes = iter([(503, "busy"), (429, "slow down"), "ok"])
    with FakeChatServer(lambda prompt: next(outcomes)) as server:
        client = endpoint(server)
        assert client.complete("x") == "ok"
        assert client.calls == 3


def test_client_fails_fast_on_client_errors_and_after_retries():
    with FakeChatServer(lambda prompt: (400, "bad model")) as server:
        with pytest.raises(EndpointError, match="HTTP 400: bad model"):
            endpoint(server).complete("x")
        assert len(server.prompts) == 1
    with FakeChatServer(lambda prompt: (500, "down")) as server:
        with pytest.raises(EndpointError, match="no answer after 3 attempts"):
            endpoint(server, max_retries=2).complete("x")
        assert len(server.prompts) == 3


def test_llm_valence_maps_replies_and_skips_empty_predictions():
    def reply(prompt):
        words = re.search(r"Input: \[(.*)\]; Output:$", prompt).group(1)
        return {"happy, relaxed": "Positive.", "angry": "negative", "ok": "I cannot tell"}[words]

    with FakeChatServer(reply) as server:
        mapper = LLMValence(endpoint(server))
        assert mapper([["happy", "relaxed"], ["angry"], ["ok"], []]) == [1, -1, 0, 0]
        assert len(server.prompts) == 3


def test_answer_extractor_prefers_tags_then_asks_the_llm():
    with FakeChatServer(lambda prompt: "[Worried, tense]") as server:
        extract = AnswerWordExtractor(endpoint(server))
        assert extract("<think>...</think><answer>Happy, calm</answer>") == ["happy", "calm"]
        assert server.prompts == []
        assert extract("The man looks worried and tense about the exam.") == ["worried", "tense"]
        assert "worried and tense" in server.prompts[0]
    assert AnswerWordExtractor()("happy; sad") == ["happy", "sad"]


def test_mme_emotion_recognition_reasoning_cot(tmp_path):
    steps = {
        "r1": "1. The brows are raised.\n2. The voice is loud.\n3. The answer is surprise.",
        "r2": "Step 1: She cries.\nStep 2: The answer is happy.",
        "r3": "The answer is anger.",
    }
    correct = {"The brows are raised.": "1", "The voice is loud.": "0", "The answer is surprise.": "1",
               "She cries.": "1", "The answer is happy.": "0", "The answer is anger.": "yes"}

    def reply(prompt):
        if prompt.startswith("Rewrite"):
            return steps[re.search(r"Response: (r\d)", prompt).group(1)]
        return correct[re.search(r"Step \([a-z ]+\): (.*)\nScore:", prompt).group(1)]

    items = [MMEEmotionItem("1", "ER", "q", "surprise", "r1"), MMEEmotionItem("2", "ER", "q", "sad", "r2"),
             MMEEmotionItem("3", "SA", "q", "anger", "r3")]
    with FakeChatServer(reply) as server:
        scorer = MMEEmotionScorer(endpoint(server, tmp_path), workers=2)
        with pytest.warns(UserWarning, match="reasoning steps"):
            result = scorer.score(items)
        calls = len(server.prompts)
        with pytest.warns(UserWarning):
            again = MMEEmotionScorer(endpoint(server, tmp_path)).score(items)
        assert len(server.prompts) == calls  # a re-run is served from the cache
    assert again == result
    assert result.per_item["1"].recognition == 1 and result.per_item["1"].reasoning == 0.5
    assert result.per_item["1"].cot == 0.75
    assert (result.per_item["2"].recognition, result.per_item["2"].reasoning) == (0, 1)
    assert (result.per_item["3"].recognition, result.per_item["3"].reasoning) == (1, 0)
    assert result.per_task["ER"].recognition == 0.5 and result.per_task["ER"].cot == pytest.approx(0.625)
    assert result.overall.recognition == pytest.approx(0.75)


def test_parse_steps_falls_back_to_lines():
    assert parse_steps("first\n\nsecond") == ["first", "second"]
    assert parse_steps("1) a\n2. b") == ["a", "b"]
