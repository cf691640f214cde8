"""MER-UniBench metrics: HIT (basic emotions), weighted F1 (sentiment), F_s (open-set, OV-MERD+).

Definitions follow the official MER-UniBench evaluation. Where that code divides by zero (no
scorable sample on a wheel, P + R = 0, no sentiment sample left) these functions return 0 and
emit a `MetricWarning`, so a table never holds NaN.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from megatron_omni.eval.parsing import exact_words, official_words
from megatron_omni.text.lexicon import EmotionWheelLexicon
from megatron_omni.text.overlap import overlap_precision_recall


class MetricWarning(UserWarning):
    """A metric hit an empty denominator and was reported as 0."""


def safe_ratio(numerator: float, denominator: float, what: str) -> float:
    if denominator == 0:
        warnings.warn(f"{what}: empty denominator, reported as 0", MetricWarning, stacklevel=3)
        return 0.0
    return numerator / denominator


def mean_or_zero(values: Sequence[float], what: str) -> float:
    return safe_ratio(float(sum(values)), len(values), what)


def f_measure(precision: float, recall: float, what: str = "F-score") -> float:
    return safe_ratio(2 * precision * recall, precision + recall, what)


@dataclass(frozen=True)
class WheelFigures:
    precision: float
    recall: float
    fscore: float
    scored: int  # samples whose ground truth maps onto this wheel


@dataclass(frozen=True)
class OpenSetScore:
    """F_s with its precision and recall, each the plain mean over wheels."""

    fscore: float
    precision: float
    recall: float
    level: str
    per_wheel: dict[str, WheelFigures] = field(default_factory=dict)


@dataclass(frozen=True)
class HitScore:
    hit_rate: float
    per_wheel: dict[str, float]
    scored: dict[str, int]


@dataclass(frozen=True)
class SentimentScore:
    weighted_f1: float
    accuracy: float
    scored: int  # samples left after dropping true valence 0
    dropped_neutral: int


def _mapped(value: object, lexicon: EmotionWheelLexicon, wheel: str, level: str) -> set[str]:
    """Wheel classes of a label or prediction: a raw string is read the official way; a word list
    (already read, officially or leniently) is taken as it is. Words are looked up verbatim, as
    the official code does."""
    return lexicon.map_words(exact_words(official_words(value)), wheel, level)


def openset_score(name2gt: Mapping[str, object], name2pred: Mapping[str, object],
                  lexicon: EmotionWheelLexicon, level: str = "level1") -> OpenSetScore:
    """F_s on open-set labels; a sample without a prediction counts as an empty prediction."""
    per_wheel: dict[str, WheelFigures] = {}
    for wheel in lexicon.wheel_names:
        pairs = [
            pr for name, truth in name2gt.items()
            if (pr := overlap_precision_recall(_mapped(truth, lexicon, wheel, level),
                                               _mapped(name2pred.get(name), lexicon, wheel, level))) is not None
        ]
        what = f"open-set {wheel}/{level}"
        precision = mean_or_zero([p for p, _ in pairs], f"{what} precision")
        recall = mean_or_zero([r for _, r in pairs], f"{what} recall")
        per_wheel[wheel] = WheelFigures(precision, recall, f_measure(precision, recall, what), len(pairs))
    figures = list(per_wheel.values())
    return OpenSetScore(
        fscore=mean_or_zero([f.fscore for f in figures], "open-set F over wheels"),
        precision=mean_or_zero([f.precision for f in figures], "open-set P over wheels"),
        recall=mean_or_zero([f.recall for f in figures], "open-set R over wheels"),
        level=level,
        per_wheel=per_wheel,
    )


def hit_score(name2gt: Mapping[str, object], name2pred: Mapping[str, object],
              lexicon: EmotionWheelLexicon) -> HitScore:
    """HIT at level 1: share of samples whose mapped label is among the mapped predicted words.

    Samples whose label maps to nothing on a wheel (e.g. 'neutral') are skipped on that wheel.
    """
    per_wheel, scored = {}, {}
    for wheel in lexicon.wheel_names:
        hits = []
        for name, truth in name2gt.items():
            mapped_truth = _mapped(truth, lexicon, wheel, "level1")
            if mapped_truth:
                hits.append(float(bool(mapped_truth & _mapped(name2pred.get(name), lexicon, wheel, "level1"))))
        per_wheel[wheel] = mean_or_zero(hits, f"HIT {wheel}")
        scored[wheel] = len(hits)
    return HitScore(mean_or_zero(list(per_wheel.values()), "HIT over wheels"), per_wheel, scored)


def weighted_f1(truth: Sequence[object], predicted: Sequence[object]) -> float:
    """Support-weighted mean of per-class F1 (scikit-learn's average='weighted', zero_division=0)."""
    if len(truth) != len(predicted):
        raise ValueError(f"weighted_f1: {len(truth)} labels but {len(predicted)} predictions")
    total = 0.0
    for label in set(truth) | set(predicted):
        true_positive = sum(1 for t, p in zip(truth, predicted) if t == label and p == label)
        support = sum(1 for t in truth if t == label)
        predicted_count = sum(1 for p in predicted if p == label)
        if support == 0:
            continue
        precision = true_positive / predicted_count if predicted_count else 0.0
        recall = true_positive / support
        total += support * (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return safe_ratio(total, len(truth), "weighted F1")


def sentiment_score(name2valence: Mapping[str, float], name2predicted: Mapping[str, int]) -> SentimentScore:
    """Weighted F1 and accuracy on positive vs non-positive; true valence 0 is dropped.

    A sample without a predicted valence counts as neutral (0), as an unparseable answer does in
    the official code.
    """
    kept = [(value > 0, name2predicted.get(name, 0) > 0) for name, value in name2valence.items() if value != 0]
    truth = [t for t, _ in kept]
    predicted = [p for _, p in kept]
    accuracy = mean_or_zero([float(t == p) for t, p in kept], "sentiment accuracy")
    return SentimentScore(weighted_f1(truth, predicted), accuracy, len(kept), len(name2valence) - len(kept))


def benchmark_mean(scores: Iterable[float]) -> float:
    """Plain mean of data-set scores (fractions), x100 as the published tables print it."""
    return 100.0 * mean_or_zero(list(scores), "benchmark mean")
