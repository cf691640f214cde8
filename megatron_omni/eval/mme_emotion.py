"""MME-Emotion scoring: an LLM rewrites each response into steps, a judge scores each step 0/1.

Recognition = score of the last step (the conclusion), Reasoning = mean score of the earlier
steps, CoT = 0.5 * Recognition + 0.5 * Reasoning. Scores are averaged per task and over tasks.
A response with a single step has no reasoning steps: its Reasoning is 0 (with a warning).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.eval.llm_endpoint import ChatEndpoint
from megatron_omni.eval.metrics import mean_or_zero
from megatron_omni.text.jsonl import read_jsonl

ITEM_FIELDS = ("id", "task", "question", "answer", "response")


@dataclass(frozen=True)
class MMEEmotionItem:
    id: str
    task: str
    question: str
    answer: str  # the ground-truth answer
    response: str  # the model's full response


def load_mme_items(path: str | Path) -> list[MMEEmotionItem]:
    """JSONL with fields id, task, question, answer, response."""
    return [MMEEmotionItem(**{f: str(record[f]) for f in ITEM_FIELDS})
            for _, record in read_jsonl(path, ValueError, required=ITEM_FIELDS)]


STEP_PROMPT = (
    "Rewrite the response below as a numbered list of its reasoning steps, one step per line, in the "
    "form '1. ...'. Keep the content, do not add anything. The last step must state the final answer.\n\n"
    "Question: {question}\nResponse: {response}\nSteps:"
)
JUDGE_PROMPT = (
    "You judge one step of a model's answer to an emotion question. Reply 1 if the step is correct "
    "and consistent with the ground truth, 0 otherwise. Reply with the digit only.\n"
    "Question: {question}\nGround-truth answer: {answer}\n"
    "Step ({role}): {step}\nScore:"
)
_NUMBERED = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s*(.+?)\s*$", re.IGNORECASE)


def parse_steps(reply: str) -> list[str]:
    """Numbered lines of the reply; when none is numbered, its non-empty lines."""
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    numbered = [m.group(1) for line in lines if (m := _NUMBERED.match(line))]
    return numbered or lines


def parse_judgement(reply: str) -> int:
    """1 for a reply starting with 1/yes/correct, 0 for anything else."""
    text = reply.strip().lower()
    return 1 if re.match(r"^(1\b|yes\b|correct\b)", text) else 0


@dataclass(frozen=True)
class StepScores:
    recognition: float
    reasoning: float
    cot: float


@dataclass(frozen=True)
class MMEEmotionResult:
    per_item: dict[str, StepScores]
    per_task: dict[str, StepScores]
    overall: StepScores  # mean over tasks


class MMEEmotionScorer:
    """Step extraction and per-step judging through OpenAI-compatible endpoints (may be the same)."""

    def __init__(self, step_endpoint: ChatEndpoint, judge_endpoint: ChatEndpoint | None = None, workers: int = 4):
        self.step_endpoint = step_endpoint
        self.judge_endpoint = judge_endpoint or step_endpoint
        self.workers = workers

    def score_item(self, item: MMEEmotionItem) -> StepScores:
        steps = parse_steps(self.step_endpoint.complete(STEP_PROMPT.format(question=item.question,
                                                                           response=item.response)))
        if not steps:
            return StepScores(0.0, 0.0, 0.0)
        judged = [parse_judgement(self.judge_endpoint.complete(JUDGE_PROMPT.format(
            question=item.question, answer=item.answer, step=step,
            role="final conclusion" if i == len(steps) - 1 else "reasoning step")))
            for i, step in enumerate(steps)]
        recognition = float(judged[-1])
        reasoning = mean_or_zero(judged[:-1], f"MME-Emotion item {item.id}: reasoning steps")
        return StepScores(recognition, reasoning, 0.5 * recognition + 0.5 * reasoning)

    def score(self, items: Sequence[MMEEmotionItem], progress: bool = False) -> MMEEmotionResult:
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = pool.map(self.score_item, items)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(items), desc="MME-Emotion", unit="item")
            per_item = dict(zip((item.id for item in items), results))
        tasks: dict[str, list[StepScores]] = {}
        for item in items:
            tasks.setdefault(item.task, []).append(per_item[item.id])
        per_task = {task: _mean_scores(scores, f"task {task}") for task, scores in sorted(tasks.items())}
        return MMEEmotionResult(per_item, per_task, _mean_scores(list(per_task.values()), "tasks"))


def _mean_scores(scores: Sequence[StepScores], what: str) -> StepScores:
    return StepScores(*(mean_or_zero([getattr(s, f) for s in scores], f"MME-Emotion {what} {f}")
                        for f in ("recognition", "reasoning", "cot")))
