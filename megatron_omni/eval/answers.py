"""Emotion words from a model's output: `<answer>` parsing, with an optional LLM parser for the
free-text answers of models that do not use our format."""
from __future__ import annotations

from megatron_omni.eval.llm_endpoint import ChatEndpoint
from megatron_omni.text.completion import extract_answer
from megatron_omni.text.wordlists import parse_emotion_words

EXTRACTION_PROMPT = (
    "You are an expert in emotion analysis. Read the description below and list every emotion the "
    "person is said to feel, as English emotion words (adjectives or nouns), comma-separated inside "
    "square brackets, for example [happy, relaxed]. If no emotion is named, reply [].\n"
    "Description: {text}\nEmotion words:"
)


class AnswerWordExtractor:
    """Output text -> emotion words.

    Uses the `<answer>` block when there is one. Otherwise, with an endpoint, asks the LLM to list
    the emotions of the free text; without one, reads the whole text as a word list.
    """

    def __init__(self, endpoint: ChatEndpoint | None = None):
        self.endpoint = endpoint

    def __call__(self, output: str) -> list[str]:
        answer = extract_answer(output)
        if answer is not None:
            return parse_emotion_words(answer)
        if self.endpoint is None:
            return parse_emotion_words(output)
        return parse_emotion_words(self.endpoint.complete(EXTRACTION_PROMPT.format(text=output.strip())))
