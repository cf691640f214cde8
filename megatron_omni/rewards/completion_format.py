"""The completion format `<think> reasoning </think> <answer> comma-separated words </answer>`."""
from __future__ import annotations

import re
from dataclasses import dataclass

# One think block, then one answer block holding comma-separated words, nothing around them but
# whitespace. Neither block may be empty or contain another tag.
_WORD = r"[^,<>\n]*[^,<>\s][^,<>\n]*"
FORMAT_PATTERN = re.compile(
    rf"\s*<think>(?P<think>(?:(?!</?think>|</?answer>).)*\S(?:(?!</?think>|</?answer>).)*)</think>"
    rf"\s*<answer>(?P<answer>\s*{_WORD}(?:\s*,\s*{_WORD})*\s*)</answer>\s*",
    re.DOTALL,
)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)(?:</think>|<answer>|$)", re.DOTALL)


@dataclass(frozen=True)
class ParsedCompletion:
    think: str  # the reasoning text ("" when there is none)
    think_start: int  # character offset of `think` inside the completion
    answer: str | None  # the text inside <answer>, None when there is no answer tag


def format_reward(completion: str) -> float:
    """1.0 when the whole completion has the expected format, else 0.0."""
    return 1.0 if FORMAT_PATTERN.fullmatch(completion) else 0.0


def extract_answer(completion: str) -> str | None:
    """The text of the last <answer> block (an unclosed last block runs to the end), or None."""
    matches = _ANSWER.findall(completion)
    return matches[-1].strip() if matches else None


def parse_completion(completion: str) -> ParsedCompletion:
    """Reasoning and answer of a completion, tolerant of a missing or unclosed tag.

    Without a <think> tag, the reasoning is everything before the first <answer> tag.
    """
    think = _THINK.search(completion)
    if think:
        text, start = think.group(1), think.start(1)
    else:
        answer_at = completion.find("<answer>")
        text, start = completion[: answer_at if answer_at >= 0 else len(completion)], 0
    return ParsedCompletion(think=text, think_start=start, answer=extract_answer(completion))
