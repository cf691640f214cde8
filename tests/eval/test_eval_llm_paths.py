"""LLM-endpoint paths against a local HTTP server: client, valence, the official answer parser,
MME-Emotion (library and command line)."""
import base64
import json
import re

import pytest
from evaluate_cli import evaluate_tool
from fake_llm_server import FakeChatServer

from megatron_omni.eval.answers import LLMAnswerParser, postprocess_reply
from megatron_omni.eval.llm_endpoint import ChatEndpoint, EndpointConfig, EndpointError
from megatron_omni.eval.mme_emotion import MMEEmotionItem, MMEEmotionScorer, parse_scores
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


def test_official_answer_parser_sends_every_output_with_the_official_sampling():
    outputs = ["<think>He frowns.</think><answer>Happy, calm</answer>", "The man looks worried and tense."]
    with FakeChatServer(lambda prompt: "Output: [Worried,\n tense]\n") as server:
        parse = LLMAnswerParser(endpoint(server))
        assert [parse(o) for o in outputs] == ["[Worried, tense]", "[Worried, tense]"]
    # the tagged output too: the official protocol parses every output with the LLM
    assert len(server.prompts) == 2
    for output, prompt, payload in zip(outputs, server.prompts, server.payloads):
        assert prompt.startswith("Please assume the role of an expert in the field of emotions. We provide clues")
        assert prompt.endswith(f"Output: [happy, sad, angry] Input: {output}; Output: ")
        assert [m["role"] for m in payload["messages"]] == ["user"]
        assert {k: payload[k] for k in ("temperature", "top_p", "repetition_penalty", "max_tokens")} == {
            "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05, "max_tokens": 512}


@pytest.mark.parametrize("reply, text", [
    ("  Output: [happy]", "[happy]"), ("输出：[sad]", "[sad]"), ("Input: x", "x"), ("[a,\nb]\n", "[a,b]"),
    (": [calm]", "[calm]"), ("outputOutput [x]", "[x]"),
    ("output Output [x]", "Output [x]"),  # each label once, in order, with no strip in between
])
def test_postprocess_reply_is_the_official_cleanup(reply, text):
    assert postprocess_reply(reply) == text


def test_answer_parser_llm_end_to_end_scores_every_output_cached(tmp_path, fixture_wheel_dir):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "a", "openset": ["upset"]}\n{"id": "b", "openset": ["thrilling"]}\n', encoding="utf-8")
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text(json.dumps({"id": "a", "output": "<answer>thrilling</answer> she is upset"}) + "\n"
                           + json.dumps({"id": "b", "output": "a thrilling ride"}) + "\n", encoding="utf-8")
    replies = {"upset": iter([(503, "busy"), "[Upset]"]), "ride": iter(["Output: [thrilling, calmly]"])}

    def reply(prompt):
        return next(replies["upset" if "upset" in prompt else "ride"])

    argv = ["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / "out"), "--answer-parser", "llm",
            "--set", "toy@openset", str(predictions), str(labels)]
    with FakeChatServer(reply) as server:
        server_url = ["--llm-url", server.url, "--llm-model", "qwen"]
        summary = evaluate_tool.main([*argv, *server_url])
        assert len(server.prompts) == 3  # two outputs, one retried after the 503
        assert evaluate_tool.main([*argv, *server_url]) == summary and len(server.prompts) == 3  # from the cache
    # a: LLM [upset] vs [upset] -> 1/1 on both wheels (tags alone would read "thrilling": 0)
    # b: [thrilling, calmly] vs [thrilling]: wheel1 {happy} vs {happy} 1/1; wheel2 {joy} vs {} skipped
    (result,) = summary["datasets"]
    assert result["score"] == 1.0 and summary["answer_parser"] == "llm"


def test_mme_emotion_official_steps_judging_and_scores(tmp_path):
    frame = tmp_path / "f0.jpg"
    frame.write_bytes(b"\xff\xd8jpeg-bytes")
    steps = {"r1": "<step>Step 1: brows raised. Step 2: loud voice. Step 3: surprise.</step>",
             "r2": "<step>Step 1: She cries. Step 2: happy.</step>", "r3": "<step>Step 1: anger.</step>",
             "r4": "<step>Step 1: calm.</step>"}
    judged = {"r1": "<score>Step 1: 1/1, Step 2: 0/1, Step 3: 1/1</score>", "r2": "<score>Step 1: 1/1, Step 2: 0/1</score>",
              "r3": "Rating: <score>Step 1: 1/1</score>", "r4": "I cannot rate this."}

    def reply(prompt):
        if prompt.startswith("Given the following answer"):
            return steps[re.search(r"^answer: '(r\d)'$", prompt, re.M).group(1)]
        step = re.search(r"- Model prediction: '(.*)'\n", prompt).group(1)
        assert "- Audio clue: 'a loud voice'" in prompt or "- Audio clue: ''" in prompt
        return judged[next(r for r, text in steps.items() if text == step)]

    items = [MMEEmotionItem("1", "ER-Lab", "surprise", "r1", "a loud voice", (str(frame),)),
             MMEEmotionItem("2", "ER-Lab", "sad", "r2"), MMEEmotionItem("3", "SA", "negative", "r3"),
             MMEEmotionItem("4", "SA", "neutral", "r4")]
    with FakeChatServer(reply) as server:
        result = MMEEmotionScorer(endpoint(server, tmp_path), workers=2).score(items)
        calls = len(server.prompts)
        assert MMEEmotionScorer(endpoint(server, tmp_path)).score(items) == result
        assert len(server.prompts) == calls == 8  # a re-run is served from the cache
        judge_payload = next(p for p in server.payloads if "Model prediction: '<step>Step 1: brows" in str(p))
    parts = judge_payload["messages"][1]["content"]
    assert judge_payload["messages"][0]["content"].startswith("You are an expert in affective computing")
    assert parts[1]["image_url"]["url"] == "data:image/jpeg;base64," + base64.b64encode(frame.read_bytes()).decode()
    assert (judge_payload["temperature"], judge_payload["n"], "max_tokens" in judge_payload) == (0.0, 1, False)
    # per item (Rec, Rea): 1 (1, 0.5); 2 (0, 1); 3 (1, 0: one step); 4 unscored (no <score> block)
    assert result.per_item["4"] is None and (result.scored, result.unscored) == (3, 1)
    assert (result.per_item["1"].recognition, result.per_item["1"].reasoning, result.per_item["1"].cot) == (1, 0.5, 0.75)
    assert result.per_task["ER-Lab"].recognition == 0.5 and result.per_task["ER-Lab"].cot == pytest.approx(0.625)
    assert result.per_task["SA"].cot == 0.5
    # overall pools the items (not the tasks): Rec 2/3, Rea 1.5/3
    assert result.overall.recognition == pytest.approx(2 / 3) and result.overall.reasoning == pytest.approx(0.5)
    assert result.overall.steps == pytest.approx(2.0)


def test_parse_scores_reads_the_official_score_block():
    assert parse_scores("<score>Step 1: 1/1, Step 2:0/1, Step 3: 2/4</score>") == [1.0, 0.0, 0.5]
    assert parse_scores("Step 1: 1/1") is None and parse_scores("<score>none</score>") == []


def test_mme_emotion_command_line_from_generation_then_files(tmp_path):
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "task": "ER-Lab", "answer": "happy", "audio_clue": "laughing"},
        {"id": "b", "task": "ER-Lab", "answer": "sad", "audio_clue": "sobbing"},
        {"id": "c", "task": "SA", "answer": "positive", "response": "given: positive"}]), encoding="utf-8")
    generated = []

    def generate(samples, mask_modality=None):
        generated.extend(s["id"] for s in samples)
        return [f"answer of {s['id']}" for s in samples]

    def reply(prompt):
        if prompt.startswith("Given the following answer"):
            return "<step>Step 1: look. Step 2: " + re.search(r"^answer: '(.*)'$", prompt, re.M).group(1) + "</step>"
        return ("<score>Step 1: 1/1, Step 2: 1/1</score>" if "answer of a" in prompt or "positive" in prompt
                else "<score>Step 1: 0/1, Step 2: 0/1</score>")

    out = tmp_path / "out"
    with FakeChatServer(reply) as server:
        argv = ["mme-emotion", "--manifest", str(manifest), "--out-dir", str(out), "--llm-url", server.url,
                "--llm-model", "judge"]
        summary = evaluate_tool.main(argv, generate=generate)
        assert generated == ["a", "b"]  # c carries its response
        calls = len(server.prompts)
        assert evaluate_tool.main(argv, generate=generate) == summary  # resumed: nothing generated, no call
        assert generated == ["a", "b"] and len(server.prompts) == calls == 6
        # from prediction files only (no model): the responses written above
        from_files = evaluate_tool.main([*argv[:4], str(tmp_path / "out2"), *argv[5:],
                                         "--responses", str(out / "mme_responses.jsonl")])
    assert from_files["overall"] == summary["overall"]
    assert summary["overall"]["recognition"] == pytest.approx(2 / 3) and summary["scored"] == 3
    assert summary["per_task"]["SA"]["cot"] == 1.0
    assert "| Overall | 66.7 | 66.7 | 66.7 | 2.0 |" in (out / "mme_emotion.md").read_text()
