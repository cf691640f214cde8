"""MER-UniBench: the nine test sets, how each is scored, and the results table.

Basic-emotion sets are scored by HIT, sentiment sets by weighted F1 on positive vs non-positive,
OV-MERD+ by F_s (level 1 is the headline, level 2 is reported beside it). The benchmark score is
the plain mean of the data-set scores x 100.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from megatron_omni.eval.labels import (
    MELD_CLASSES,
    load_emotion_labels,
    load_iemocap_four,
    load_openset_csv,
    load_valence_labels,
)
from megatron_omni.eval.metrics import benchmark_mean, hit_score, openset_score, sentiment_score
from megatron_omni.eval.valence import LexiconValence, ValenceMapper
from megatron_omni.text.lexicon import EmotionWheelLexicon

KINDS = ("discrete", "sentiment", "openset")
METRIC_OF_KIND = {"discrete": "HIT", "sentiment": "WAF", "openset": "F_s"}


@dataclass(frozen=True)
class BenchmarkDataset:
    key: str
    title: str
    kind: str
    label_file: str  # file name in the data set's public release
    size: int  # test samples in the official evaluation
    load_labels: Callable[[Path], dict]


DATASETS: dict[str, BenchmarkDataset] = {d.key: d for d in (
    BenchmarkDataset("mer2023", "MER2023", "discrete", "label-6way.npz", 411,
                     partial(load_emotion_labels, corpus="test1_corpus")),
    BenchmarkDataset("mer2024", "MER2024", "discrete", "label-6way.npz", 1169,
                     partial(load_emotion_labels, corpus="test1_corpus")),
    BenchmarkDataset("meld", "MELD", "discrete", "label.npz", 2610,
                     partial(load_emotion_labels, corpus="test_corpus", classes=MELD_CLASSES)),
    BenchmarkDataset("iemocapfour", "IEMOCAP", "discrete", "label_4way.npz", 1241, load_iemocap_four),
    BenchmarkDataset("cmumosi", "CMU-MOSI", "sentiment", "label.npz", 686, load_valence_labels),
    BenchmarkDataset("cmumosei", "CMU-MOSEI", "sentiment", "label.npz", 4659, load_valence_labels),
    BenchmarkDataset("sims", "CH-SIMS", "sentiment", "label.npz", 457, load_valence_labels),
    BenchmarkDataset("simsv2", "CH-SIMS v2", "sentiment", "label.npz", 1034, load_valence_labels),
    BenchmarkDataset("ovmerdplus", "OV-MERD+", "openset", "ovlabel.csv", 532, load_openset_csv),
)}


@dataclass(frozen=True)
class DatasetResult:
    dataset: str
    kind: str
    metric: str
    score: float  # a fraction in [0, 1]
    samples: int  # labelled samples
    missing_predictions: int
    details: dict = field(default_factory=dict)
    # labelled samples whose prediction the official and the lenient reading read differently
    # (None: not counted); when it is not 0, the choice of reading changes the score
    parsed_differently: int | None = None


def score_dataset(dataset: str, kind: str, labels: Mapping[str, object], predictions: Mapping[str, list[str]],
                  lexicon: EmotionWheelLexicon, valence: ValenceMapper | None = None) -> DatasetResult:
    """Score one data set; labels and predictions are keyed by sample name."""
    if kind not in KINDS:
        raise ValueError(f"{dataset}: kind must be one of {KINDS}, got {kind!r}")
    missing = sum(1 for name in labels if name not in predictions)
    if kind == "discrete":
        hit = hit_score(labels, predictions, lexicon)
        score, details = hit.hit_rate, {"per_wheel": hit.per_wheel, "scored_per_wheel": hit.scored}
    elif kind == "sentiment":
        mapper = valence or LexiconValence(lexicon)
        names = list(labels)
        predicted = dict(zip(names, mapper([predictions.get(name, []) for name in names])))
        sentiment = sentiment_score({n: float(labels[n]) for n in names}, predicted)
        score = sentiment.weighted_f1
        details = {"accuracy": sentiment.accuracy, "scored": sentiment.scored,
                   "dropped_neutral": sentiment.dropped_neutral}
    else:
        level1 = openset_score(labels, predictions, lexicon, "level1")
        level2 = openset_score(labels, predictions, lexicon, "level2")
        score = level1.fscore
        details = {level.level: {"fscore": level.fscore, "precision": level.precision, "recall": level.recall,
                                 "per_wheel": {w: asdict(f) for w, f in level.per_wheel.items()}}
                   for level in (level1, level2)}
    return DatasetResult(dataset, kind, METRIC_OF_KIND[kind], score, len(labels), missing, details)


def results_summary(results: Sequence[DatasetResult]) -> dict:
    """JSON-ready table: one entry per data set and the mean x 100."""
    return {
        "datasets": [asdict(r) for r in results],
        "mean": benchmark_mean(r.score for r in results) if results else 0.0,
        "datasets_in_mean": len(results),
        "complete": {r.dataset for r in results} >= {d.title for d in DATASETS.values()},
    }


def results_markdown(results: Sequence[DatasetResult]) -> str:
    """Markdown table in the published layout (scores x 100, two decimals, then the mean)."""
    summary = results_summary(results)
    header = [f"{r.dataset} ({r.metric})" for r in results] + ["Mean"]
    values = [f"{100 * r.score:.2f}" for r in results] + [f"{summary['mean']:.2f}"]
    lines = ["| " + " | ".join(row) + " |" for row in (header, ["---"] * len(header), values)]
    extra = []
    for r in results:
        if r.kind == "openset":
            l2 = r.details["level2"]
            extra.append(f"- {r.dataset}: level 1 F/P/R = {100 * r.score:.2f} / "
                         f"{100 * r.details['level1']['precision']:.2f} / {100 * r.details['level1']['recall']:.2f}; "
                         f"level 2 F/P/R = {100 * l2['fscore']:.2f} / {100 * l2['precision']:.2f} / {100 * l2['recall']:.2f}")
        if r.parsed_differently:
            extra.append(f"- {r.dataset}: the official and the lenient reading differ on {r.parsed_differently} "
                         f"of {r.samples} predictions")
        if r.missing_predictions:
            extra.append(f"- {r.dataset}: {r.missing_predictions} of {r.samples} samples had no prediction (scored as empty)")
    if not summary["complete"]:
        extra.append(f"- Mean over {len(results)} of the {len(DATASETS)} MER-UniBench sets.")
    return "\n".join(lines + ([""] + extra if extra else [])) + "\n"
