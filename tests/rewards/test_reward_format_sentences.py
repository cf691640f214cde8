import pytest

from megatron_omni.text.completion import extract_answer, format_reward, parse_completion
from megatron_omni.text.sentences import split_sentences


@pytest.mark.parametrize("completion, reward", [
    ("<think>She smiles.</think> <answer>happy, relaxed</answer>", 1.0),
    ("\n<think>a\nb</think>\n<answer> happy </answer>\n", 1.0),
    ("<think>x</think><answer>very happy,calm , at ease</answer>", 1.0),
    ("<think> </think><answer>happy</answer>", 0.0),  # empty reasoning
    ("<think>x</think><answer></answer>", 0.0),  # empty answer
    ("<think>x</think><answer>happy,,sad</answer>", 0.0),  # empty word
    ("Sure! <think>x</think><answer>happy</answer>", 0.0),  # text outside the blocks
    ("<think>x</think><answer>happy</answer> done", 0.0),
    ("<answer>happy</answer><think>x</think>", 0.0),  # wrong order
    ("<think>x<answer>a</answer></think><answer>b</answer>", 0.0),  # nested tag
    ("<think>x</think><answer>happy</answer><answer>sad</answer>", 0.0),  # two answers
    ("<think>x</think>happy", 0.0),
])
def test_format_reward(completion, reward):
    assert format_reward(completion) == reward


def test_parse_completion_tolerates_missing_tags():
    parsed = parse_completion("<think>Brows raised. Voice loud.</think><answer>surprise</answer>")
    assert (parsed.think, parsed.answer) == ("Brows raised. Voice loud.", "surprise")
    assert parse_completion("Brows raised.<answer>surprise").think == "Brows raised."
    assert parse_completion("<think>unfinished").think == "unfinished"
    assert extract_answer("no tags") is None
    assert extract_answer("<answer>a</answer> then <answer> b, c </answer>") == "b, c"


@pytest.mark.parametrize("text", [
    "He frowns, then sighs!\nHer voice shakes? Yes.",
    "他皱着眉头，声音颤抖。很难过！真的吗？",
    "  leading and trailing spaces  ...  ",
    "",
    "3.5 seconds in, a smile",
])
def test_sentence_offsets_point_at_the_text(text):
    sentences = split_sentences(text)
    assert all(text[s.start:s.end] == s.text and s.text == s.text.strip() and s.text for s in sentences)
    assert all(a.end <= b.start for a, b in zip(sentences, sentences[1:]))


def test_sentence_boundaries():
    assert [s.text for s in split_sentences("He frowns, then sighs!\nHer voice shakes? Yes.")] == [
        "He frowns", "then sighs", "Her voice shakes", "Yes"]
    assert [s.text for s in split_sentences("他皱着眉头，声音颤抖。很难过！")] == ["他皱着眉头", "声音颤抖", "很难过"]
    assert [s.text for s in split_sentences("He frowns, then sighs! Ok", at_commas=False)] == [
        "He frowns, then sighs", "Ok"]


def test_format_reward_is_linear_on_long_unterminated_completions():
    # A sampling policy emits long completions without a closing tag; an exponentially
    # backtracking check would never return here.
    assert format_reward("<think>" + "a b, " * 3000 + "</think><answer>" + "x y , " * 3000) == 0.0
    assert format_reward("<think>ok</think><answer>" + "happy, " * 3000 + "sad</answer>") == 1.0
