"""MME-Emotion scoring with the official prompts (github.com/FunAudioLLM/MME-Emotion).

1. Step extraction (`extract_step/ER-Lab/code/extract_step.py`): an LLM rewrites the response as
   "Step 1: ... Step N: ..." inside <step></step>, the last step stating the prediction.
2. Judging (`eval_cot/ER-Lab/code/eval_cot_gpt4o.py`): one call per item rates every step 0/1
   against the ground-truth label, the audio clue and the video frames, as
   "<score>Step 1: 1/1, Step 2: 0/1</score>".
3. Metrics (`eval_cot/Overall/metrics/cal_metrics.py`): Recognition = the last step's score,
   Reasoning = the mean of the earlier steps (0 for a single step), CoT = 0.5 Rec + 0.5 Rea, each
   the mean over the items whose judgement parses (the others are counted as unscored). Overall
   pools all items; per task, the items of that task.
Both calls are at temperature 0, cached and retried by the endpoint.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_omni.eval.llm_endpoint import ChatEndpoint
from megatron_omni.text.jsonl import read_jsonl

ITEM_FIELDS = ("id", "task", "answer", "response")

STEP_SYSTEM = ("You are an expert in affective computing and very good at handling tasks related to emotion "
               "recognition.")
STEP_PROMPT = (
    "Given the following answer about the emotion conveyed in a video, please help me extract several key steps "
    "from the answer. Each step should be as concise as possible and prefixed with Step X. In the last step, "
    "showcase the predicted emotion. If there are no reasoning steps, please showcase the predicted emotion at "
    "Step 1. Enclose your result within <step></step> tags.\n"
    "answer: '{response}'\n"
    "Example 1:\n"
    "answer: In the video, an elderly man wearing a green shirt is in an outdoor nighttime setting. He appears "
    "focused and serious, with slightly furrowed brows and a serious expression. His eyes are scanning the other "
    "person, suggesting he wants to convey something important or ask about a certain thing. As time passes, his "
    "gaze shifts from scanning to direct engagement, eventually relaxing and showing a hint of happiness, "
    "indicating fluctuations in his emotions. Overall, the elderly man experiences a moderate intensity of neutral "
    "emotion, mixed with slight positive fluctuations.\n"
    "result: <step>Step 1: Observe the setting and characters in the video, noting any relevant details such as "
    "location and participants' appearance. Step 2: Analyze the facial expressions and movements, such as furrowed "
    "brows and downturned eyes, looking for indicators of specific emotions. Step 3: Consider verbal and non-verbal "
    "cues, including mouth movements and gaze direction, that signify communication and emotional responses. "
    "Step 4: Synthesize observations to understand the overall emotional state conveyed by the participant. "
    "Step 5: Based on the analysis, determine that the predicted emotion is neutral.</step>\n"
    "Example 2:\n"
    "answer: happy\n"
    "result: <step>Step 1: The predicted emotion is happy.</step>"
)
STEP_SAMPLING = {"temperature": 0.0, "max_tokens": None}  # the official call sets temperature only

_INDENT = " " * 24  # the official f-string's indentation is part of the prompt
JUDGE_PROMPT = (
    f"{_INDENT}I will first give you some ground truth information about the emotion in a video: {_INDENT}"
    f"visual clue, audio clue, and emotion label. I will also give you a model prediction. {_INDENT}"
    "Please help me rate the performance of the prediction. \n\n"
    f"{_INDENT}Rating Requirements:\n"
    f"{_INDENT}1. Rate each step using 0 or 1 (0=wrong, 1=correct)\n"
    f"{_INDENT}2. For the last step, your rating should be 1 if the predicted emotion matches the ground truth "
    "emotion label, otherwise 0. Don't consider visual/audio cues at this step\n"
    f"{_INDENT}3. For each other step, only consider predictions clearly contradicting visual/audio cues as "
    "incorrect\n"
    f"{_INDENT}4. Ensure the number of steps in your rating is equal to that in the model prediction\n"
    f"{_INDENT}5. Output format: <score>Step 1: 0/1, Step 2: 1/1,...</score>\n\n"
    f"{_INDENT}Input Data:\n"
    f"{_INDENT}- Visual clue: The video frames (images)\n"
    f"{_INDENT}- Audio clue: '{{audio_clue}}'\n"
    f"{_INDENT}- Emotion label: '{{ground_truth}}'\n"
    f"{_INDENT}- Model prediction: '{{step}}'\n\n"
    f"{_INDENT}Example Output: \n"
    f"{_INDENT}<score>Step 1: 1/1, Step 2: 0/1, Step 3: 0/1</score>"
)
JUDGE_SAMPLING = {"temperature": 0.0, "n": 1, "max_tokens": None}
MAX_FRAMES = 10  # the official judge sends at most ten frames (one per second of video)


@dataclass(frozen=True)
class MMEEmotionItem:
    id: str
    task: str
    answer: str  # the ground-truth label
    response: str  # the model's full response
    audio_clue: str = ""
    frames: tuple[str, ...] = ()  # JPEG frames of the video shown to the judge


def mme_item(record: dict, where: str) -> MMEEmotionItem:
    """An item from a JSON record: id, task, answer, response, optional audio_clue and frames."""
    missing = [f for f in ITEM_FIELDS if f not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    frames = record.get("frames") or []
    if not (isinstance(frames, list) and all(isinstance(f, str) for f in frames)):
        raise ValueError(f"{where}: 'frames' must be a list of image paths")
    return MMEEmotionItem(**{f: str(record[f]) for f in ITEM_FIELDS}, audio_clue=str(record.get("audio_clue") or ""),
                          frames=tuple(frames[:MAX_FRAMES]))


def load_mme_items(path: str | Path) -> list[MMEEmotionItem]:
    """JSONL with fields id, task, answer, response (audio_clue, frames optional)."""
    return [mme_item(record, where) for where, record in read_jsonl(path, ValueError)]


_SCORE_BLOCK = re.compile(r"<score>(.*?)</score>")
_STEP_SCORE = re.compile(r":\s*(\d+)/(\d+)")


def parse_scores(reply: str) -> list[float] | None:
    """The official `parse_score` (Overall): each "k/n" inside <score>; None without the block."""
    block = _SCORE_BLOCK.search(reply)
    if not block:
        return None
    return [int(k) / int(n) if int(n) else 0.0 for k, n in _STEP_SCORE.findall(block.group(1))]


@dataclass(frozen=True)
class StepScores:
    recognition: float
    reasoning: float
    cot: float
    steps: float  # the number of judged steps (a mean over items for a group)


@dataclass(frozen=True)
class MMEEmotionResult:
    per_item: dict[str, StepScores | None]  # None: the judgement did not parse
    per_task: dict[str, StepScores]
    overall: StepScores
    scored: int
    unscored: int

    def summary(self) -> dict:
        return {"overall": asdict(self.overall), "per_task": {t: asdict(s) for t, s in self.per_task.items()},
                "scored": self.scored, "unscored": self.unscored,
                "per_item": {i: (asdict(s) if s else None) for i, s in self.per_item.items()}}

    def markdown(self) -> str:
        rows = [("Overall", self.overall), *self.per_task.items()]
        lines = ["| Task | Rec-S | Rea-S | CoT-S | steps |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {100 * s.recognition:.1f} | {100 * s.reasoning:.1f} | {100 * s.cot:.1f} | {s.steps:.1f} |"
                  for name, s in rows]
        if self.unscored:
            lines += ["", f"- {self.unscored} of {self.scored + self.unscored} judgements did not parse (left out)"]
        return "\n".join(lines) + "\n"


def item_scores(scores: Sequence[float]) -> StepScores:
    """The official `calculate_metrics` of one item, with alpha = 0.5."""
    recognition = scores[-1]
    reasoning = sum(scores[:-1]) / (len(scores) - 1) if len(scores) > 1 else 0.0
    return StepScores(recognition, reasoning, 0.5 * recognition + 0.5 * reasoning, float(len(scores)))


def _mean(scores: Sequence[StepScores]) -> StepScores:
    if not scores:  # the official script reports 0 for an empty group
        return StepScores(0.0, 0.0, 0.0, 0.0)
    return StepScores(*(sum(getattr(s, f) for s in scores) / len(scores)
                        for f in ("recognition", "reasoning", "cot", "steps")))


class MMEEmotionScorer:
    """Step extraction and judging through OpenAI-compatible endpoints (may be the same)."""

    def __init__(self, step_endpoint: ChatEndpoint, judge_endpoint: ChatEndpoint | None = None, workers: int = 4):
        self.step_endpoint = step_endpoint
        self.judge_endpoint = judge_endpoint or step_endpoint
        self.workers = workers

    def judge_item(self, item: MMEEmotionItem) -> StepScores | None:
        steps = self.step_endpoint.complete(STEP_PROMPT.format(response=item.response), system=STEP_SYSTEM,
                                            sampling=STEP_SAMPLING)
        reply = self.judge_endpoint.complete(
            JUDGE_PROMPT.format(audio_clue=item.audio_clue, ground_truth=item.answer, step=steps),
            system=STEP_SYSTEM, sampling=JUDGE_SAMPLING, images=item.frames)
        scores = parse_scores(reply)
        return item_scores(scores) if scores else None

    def score(self, items: Sequence[MMEEmotionItem], progress: bool = False) -> MMEEmotionResult:
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = pool.map(self.judge_item, items)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(items), desc="MME-Emotion", unit="item")
            per_item = dict(zip((item.id for item in items), results))
        tasks: dict[str, list[StepScores]] = {}
        for item in items:
            if per_item[item.id] is not None:
                tasks.setdefault(item.task, []).append(per_item[item.id])
        scored = [s for s in per_item.values() if s is not None]
        return MMEEmotionResult(per_item, {task: _mean(group) for task, group in sorted(tasks.items())},
                                _mean(scored), len(scored), len(per_item) - len(scored))
