import random
import warnings

import pytest
from official_oracle import wheel_metric
from sklearn.metrics import f1_score

from megatron_omni.eval.metrics import (
    MetricWarning,
    benchmark_mean,
    hit_score,
    openset_score,
    sentiment_score,
    weighted_f1,
)
from megatron_omni.eval.parsing import lenient_words

# Fixture lexicon classes (level 1): wheel1 thrilling/calmly/merriment -> happy, upset/alone -> sad;
# wheel2 upset -> anger, calmly/merriment/gladness -> joy; thrilling/alone unmappable on wheel2.
LABELS = {"a": "[thrilling, alone]", "b": "['upset']", "c": "alone", "d": "pleased, nonsense"}
PREDICTIONS = {"a": "[Thrilling; thrilling, upset]", "b": "merriment", "c": "", "d": "calmly"}


def test_openset_hand_computed(fixture_lexicon):
    score = openset_score(LABELS, PREDICTIONS, fixture_lexicon, "level1")
    # Raw strings are read the official way: a's "Thrilling; thrilling" is one (unknown) word.
    # wheel1: a gt{happy,sad} pred{sad} P=1 R=1/2; b gt{sad} pred{happy} 0/0; c empty pred 0/0;
    # d gt unmappable -> skipped.  P = 1/3, R = 1/6.
    wheel1 = score.per_wheel["wheel1"]
    assert (wheel1.precision, wheel1.recall, wheel1.scored) == (pytest.approx(1 / 3), pytest.approx(1 / 6), 3)
    # wheel2: a gt{} skipped; b gt{anger} pred{joy} 0/0; c skipped; d skipped.  P = R = 0 -> F = 0.
    wheel2 = score.per_wheel["wheel2"]
    assert (wheel2.precision, wheel2.recall, wheel2.fscore, wheel2.scored) == (0, 0, 0, 1)
    assert score.fscore == pytest.approx((2 * (1 / 3) * (1 / 6) / (1 / 3 + 1 / 6) + 0) / 2)
    assert score.precision == pytest.approx(1 / 6)
    # Word lists read leniently beforehand are taken as they are: a's pred is then {happy, sad}, P = R = 1/3.
    lenient = openset_score(LABELS, {k: lenient_words(v) for k, v in PREDICTIONS.items()}, fixture_lexicon, "level1")
    assert (lenient.per_wheel["wheel1"].precision, lenient.per_wheel["wheel1"].recall) == (
        pytest.approx(1 / 3), pytest.approx(1 / 3))


@pytest.mark.parametrize("level", ["level1", "level2"])
def test_openset_matches_literal_official_on_fixture(fixture_wheel_dir, fixture_lexicon, level):
    rng = random.Random(0)
    # 'unknownbases' is left out: the official code raises KeyError on a base word that no synonym
    # run lists, where the library drops the word.
    vocabulary = ["thrilling", "upset", "alone", "calmly", "merriment", "gladness", "happiness", "pleased",
                  "delightful", "cheer", "upsetting", "Nonsense"]
    labels = {f"s{i}": str(rng.sample(vocabulary, rng.randint(1, 4))) for i in range(60)}
    predictions = {f"s{i}": ", ".join(rng.sample(vocabulary, rng.randint(0, 5))) for i in range(60)}
    (f, p, r), _ = wheel_metric(str(fixture_wheel_dir), labels, predictions, level,
                                wheels=("wheel1", "wheel2"), runs=("run1", "run2"))
    ours = openset_score(labels, predictions, fixture_lexicon, level)
    assert (ours.fscore, ours.precision, ours.recall) == (pytest.approx(f), pytest.approx(p), pytest.approx(r))


def test_empty_and_unmappable_predictions_score_zero(fixture_lexicon):
    with pytest.warns(MetricWarning, match="F-score|open-set"):
        score = openset_score({"a": "thrilling"}, {"a": "pleased, nonsense"}, fixture_lexicon)
    assert score.fscore == 0.0
    with pytest.warns(MetricWarning):
        missing = openset_score({"a": "thrilling"}, {}, fixture_lexicon)
    assert missing.fscore == 0.0


def test_ground_truth_unmappable_everywhere_reports_zero_with_warning(fixture_lexicon):
    with pytest.warns(MetricWarning, match="empty denominator"):
        score = openset_score({"a": "pleased"}, {"a": "thrilling"}, fixture_lexicon)
    assert (score.fscore, score.precision, score.recall) == (0.0, 0.0, 0.0)
    assert all(f.scored == 0 for f in score.per_wheel.values())


def test_duplicates_do_not_change_scores(fixture_lexicon):
    once = openset_score({"a": "thrilling, alone"}, {"a": "thrilling, upset"}, fixture_lexicon)
    repeated = openset_score({"a": "thrilling, alone, alone"}, {"a": "THRILLING, thrilling, upset, upset"},
                             fixture_lexicon)
    assert once == repeated


def test_hit_rate_hand_computed(fixture_lexicon):
    labels = {"a": "upset", "b": "merriment", "c": "alone", "d": "neutral"}
    predictions = {"a": "[alone, calmly]", "b": "thrilling", "c": "calmly"}
    score = hit_score(labels, predictions, fixture_lexicon)
    # wheel1: a sad in {sad, happy} hit; b happy hit; c sad vs {happy} miss; d skipped -> 2/3
    # wheel2: a anger vs {joy} miss; b joy vs {} miss; c, d skipped -> 0/2
    assert score.per_wheel == {"wheel1": pytest.approx(2 / 3), "wheel2": 0.0}
    assert score.scored == {"wheel1": 3, "wheel2": 2}
    assert score.hit_rate == pytest.approx(1 / 3)


def test_weighted_f1_matches_scikit_learn():
    rng = random.Random(1)
    for _ in range(20):
        truth = [rng.random() < 0.6 for _ in range(rng.randint(1, 40))]
        predicted = [rng.random() < 0.5 for _ in truth]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = f1_score(truth, predicted, average="weighted", zero_division=0)
        assert weighted_f1(truth, predicted) == pytest.approx(expected)


def test_sentiment_drops_neutral_labels_and_counts_missing_as_neutral():
    labels = {"a": 1.2, "b": -0.4, "c": 0.0, "d": 2.0, "e": -1.0}
    predicted = {"a": 1, "b": -1, "c": 1, "d": 0}  # e missing -> neutral (non-positive)
    score = sentiment_score(labels, predicted)
    truth = [True, False, True, False]
    guess = [True, False, False, False]
    assert score.scored == 4 and score.dropped_neutral == 1
    assert score.weighted_f1 == pytest.approx(f1_score(truth, guess, average="weighted"))
    assert score.accuracy == pytest.approx(0.75)
    with pytest.warns(MetricWarning):
        assert sentiment_score({"a": 0.0}, {"a": 1}).weighted_f1 == 0.0


def test_benchmark_mean_is_plain_average_times_100():
    assert benchmark_mean([0.5, 0.7, 0.9]) == pytest.approx(70.0)


def test_lexicon_valence_votes(fixture_lexicon):
    from megatron_omni.eval.valence import LexiconValence, parse_valence_reply

    valence = LexiconValence(fixture_lexicon)
    # upset: sad (-1) on wheel1, anger (-1) on wheel2; calmly: happy, joy (+1); thrilling: happy only
    assert [valence.word_valence(w) for w in ("upset", "calmly", "thrilling", "pleased")] == [-1, 1, 1, 0]
    assert valence.word_valence("positive sentiment") == 1 and valence.word_valence("Negative") == -1
    assert valence([["thrilling", "upset", "alone"], ["calmly", "upset", "merriment"], [], ["pleased"]]) == [-1, 1, 0, 0]
    assert [parse_valence_reply(r) for r in ("Positive.", "it is negative", "mixed")] == [1, -1, 0]
