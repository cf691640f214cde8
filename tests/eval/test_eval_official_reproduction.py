"""OV-MERD+ F_s of AffectGPT's released predictions: library vs a literal official re-implementation."""
import csv

import numpy as np
import pytest
from official_oracle import wheel_metric

from megatron_omni.eval.metrics import openset_score
from megatron_omni.eval.predictions import load_predictions


@pytest.fixture
def ovmerd(shared_data):
    labels_path = shared_data / "mer_unibench" / "ovmerd_labels_332.csv"
    with open(labels_path, newline="", encoding="utf-8") as handle:
        raw_labels = {row["name"]: row["openset"] for row in csv.DictReader(handle)}
    predictions_path = shared_data / "mer_unibench" / "affectgpt_ovmerdplus_predictions.npz"
    archive = np.load(predictions_path)
    raw_predictions = dict(zip(archive["filenames"].tolist(), archive["fileitems"].tolist()))
    return raw_labels, raw_predictions, load_predictions(predictions_path)


@pytest.mark.parametrize("level", ["level1", "level2"])
def test_affectgpt_ovmerdplus_matches_official(shared_data, real_lexicon, ovmerd, level):
    raw_labels, raw_predictions, predictions = ovmerd
    assert len(raw_labels) == 332 and len(predictions) == 532
    (f_official, p_official, r_official), per_wheel = wheel_metric(
        str(shared_data / "emotion_wheel"), raw_labels, raw_predictions, level)
    ours = openset_score(raw_labels, predictions, real_lexicon, level)
    assert ours.fscore == pytest.approx(f_official, abs=1e-6)
    assert ours.precision == pytest.approx(p_official, abs=1e-6)
    assert ours.recall == pytest.approx(r_official, abs=1e-6)
    for wheel, (precision, recall) in per_wheel.items():
        assert ours.per_wheel[wheel].precision == pytest.approx(precision, abs=1e-6)
        assert ours.per_wheel[wheel].recall == pytest.approx(recall, abs=1e-6)
    # the figures are real scores, not an artefact of empty sets
    assert 0.3 < ours.fscore < 0.9
