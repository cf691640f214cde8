"""Overlap of mapped emotion-label sets: the per-sample core of the open-set F_s and of R_ew."""
from __future__ import annotations


def overlap_precision_recall(truth: set[str], predicted: set[str]) -> tuple[float, float] | None:
    """Per-sample (P, R) of mapped sets; None when the ground truth maps to nothing (skipped)."""
    if not truth:
        return None
    if not predicted:
        return 0.0, 0.0
    common = len(truth & predicted)
    return common / len(predicted), common / len(truth)
