"""R_ew: emotion-wheel F1 between the answer words and the ground-truth open set."""
from __future__ import annotations

from collections.abc import Sequence

from megatron_omni.text.lexicon import EmotionWheelLexicon
from megatron_omni.text.overlap import overlap_precision_recall


def emotion_wheel_f1(predicted: Sequence[str], truth: Sequence[str], lexicon: EmotionWheelLexicon,
                     level: str = "level1") -> float:
    """Per-sample F1 of the mapped sets, averaged over the wheels on which the truth maps.

    The same mapping and P/R as the OV-MERD+ benchmark, for one sample. 0 when the truth maps on
    no wheel or nothing predicted maps.
    """
    scores = []
    for wheel in lexicon.wheel_names:
        pair = overlap_precision_recall(lexicon.map_words(truth, wheel, level), lexicon.map_words(predicted, wheel, level))
        if pair is not None:
            precision, recall = pair
            scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores) if scores else 0.0
