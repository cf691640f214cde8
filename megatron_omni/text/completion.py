"""The completion format `<think> reasoning </think> <answer> comma-separated words </answer>`."""
from __future__ import annotations

import re
from dataclasses import dataclass

# One think block, then one answer block, nothing around them but whitespace. The block contents
# are checked in code rather than inside this pattern: nested quantifiers there backtrack
# exponentially on long unterminated completions, which a sampling policy produces.
_BLOCKS = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)(?:</think>|<answer>|$)", re.DOTALL)


@dataclass(frozen=True)
class ParsedCompletion:
    think: str  # the reasoning text ("" when there is none)
    think_start: int  # character offset of `think` inside the completion
    answer: str | None  # the text inside <answer>, None when there is no answer tag


def format_reward(completion: str) -> float:
    """1.0 when the whole completion has the expected format, else 0.0.

    The think block must hold some non-space text and no other tag; the answer block holds
    comma-separated words, none empty and none with a newline or an angle bracket.
    """
    match = _BLOCKS.fullmatch(completion)
    if match is None:
        return 0.0
    think, answer = match["think"], match["answer"]
    if not think.strip() or any(tag in think for tag in _TAGS):
        return 0.0
    words = [word.strip(" \t") for word in answer.strip().split(",")]
    if any(not word or "\n" in word or "<" in word or ">" in word for word in words):
        return 0.0
    return 1.0


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
