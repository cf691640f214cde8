"""Default scoring reads predictions as the official `string_to_list` does: hand-made rows with odd
separators, each checked against the literal official reading (tests/eval/official_oracle.py)."""
import json

import pytest
from evaluate_cli import evaluate_tool
from official_oracle import hit_rate, official_string_to_list, wheel_metric

from megatron_omni.eval.parsing import lenient_words, official_words, readings_differ

# Fixture lexicon (level 1): wheel1 thrilling/calmly/merriment/gladness -> happy, upset/alone -> sad;
# wheel2 upset -> anger, calmly/merriment/gladness -> joy.
# (prediction, differs): whether the lenient reading finds other words than the official one.
ODD_ROWS = [
    ("[upset; thrilling]", True),  # a semicolon is no official separator: one unknown word
    ("[[upset]]", True),  # one bracket pair only: "[upset]" is looked up as it is
    ("  [upset, alone]", True),  # leading whitespace: the "[" is not the first character
    ("upset.\nalone", True),  # neither the newline nor the period separates or is trimmed
    ("Thrilling, CALMLY", False),  # lower-cased by both
    ("\u201cupset\u201d, calmly", True),  # typographic quotes are kept officially
    ("merriment\uff0cupset", True),  # a CJK comma is no official separator
    ("'upset', \"alone\"", False),
    ("upset.", True),
    ("calmly ,", False),
    ("[]", False),
    ("gladness]", False),  # a trailing bracket alone is dropped
    ("[happiness", False),
    ("[upset],[alone]", True),  # inner brackets stay on the words
    ("upset  alone", True),  # two spaces: the official lookup finds nothing
    ("\tupset\t", False),
    ("[ ' ' , , ]", False),
]
LABELS = ["upset", "thrilling", "alone", "calmly"]


def _official(value):
    return list(dict.fromkeys(i.lower().strip() for i in official_string_to_list(value)))


@pytest.mark.parametrize("row, differs", ODD_ROWS)
def test_official_reading_equals_the_literal_official_code(row, differs):
    assert official_words(row) == _official(row)
    assert readings_differ(row) == differs
    assert official_words([" Upset", "ALONE "]) == ["upset", "alone"]  # a list is taken item by item


def _write_set(tmp_path, key):
    """JSONL labels (open-set and discrete) and predictions: one sample per odd row."""
    rows = [{"id": f"s{i}", "openset": [LABELS[i % 4], LABELS[(i + 1) % 4]], "emo": LABELS[i % 4]}
            for i in range(len(ODD_ROWS))]
    labels = tmp_path / f"{key}_labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    predictions = tmp_path / f"{key}_preds.jsonl"
    predictions.write_text("".join(json.dumps({"id": f"s{i}", "prediction": row}) + "\n"
                                   for i, (row, _) in enumerate(ODD_ROWS)), encoding="utf-8")
    return rows, labels, predictions


def test_default_scores_equal_the_official_code_on_odd_rows(tmp_path, fixture_wheel_dir):
    rows, labels, predictions = _write_set(tmp_path, "odd")
    argv = ["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / "out"),
            "--set", "odd@openset", str(predictions), str(labels), "--set", "odd_basic@discrete", str(predictions), str(labels)]
    summary = evaluate_tool.main(argv)
    openset, discrete = summary["datasets"]
    name2pred = {f"s{i}": row for i, (row, _) in enumerate(ODD_ROWS)}
    official = {}
    for level in ("level1", "level2"):
        official[level], _ = wheel_metric(str(fixture_wheel_dir), {r["id"]: str(r["openset"]) for r in rows}, name2pred,
                                          level, wheels=("wheel1", "wheel2"), runs=("run1", "run2"))
    assert openset["score"] == pytest.approx(official["level1"][0], abs=1e-12)
    assert [openset["details"]["level2"][k] for k in ("fscore", "precision", "recall")] == pytest.approx(
        official["level2"], abs=1e-12)
    assert discrete["score"] == pytest.approx(hit_rate(str(fixture_wheel_dir), {r["id"]: r["emo"] for r in rows},
                                                       name2pred, wheels=("wheel1", "wheel2"),
                                                       runs=("run1", "run2")), abs=1e-12)
    expected_differences = sum(differs for _, differs in ODD_ROWS)
    assert openset["parsed_differently"] == discrete["parsed_differently"] == expected_differences == 9
    assert summary["reading"] == "official"
    assert f"reading differ on {expected_differences} of {len(ODD_ROWS)} predictions" in (
        tmp_path / "out" / "results.md").read_text()

    lenient = evaluate_tool.main([*argv, "--lenient-parsing"])
    assert lenient["reading"] == "lenient"
    # the robust reading recovers words the official code drops: it scores higher on these rows
    assert lenient["datasets"][0]["score"] > openset["score"] and lenient["datasets"][1]["score"] > discrete["score"]
    assert lenient["datasets"][0]["parsed_differently"] == expected_differences


def test_generated_predictions_are_read_again_from_their_raw_output(tmp_path, fixture_wheel_dir):
    """A generation file holds {id, output, answer}; scoring reads `output` under the current reading."""
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "a", "openset": ["upset", "alone"]}\n', encoding="utf-8")
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text(json.dumps({"id": "a", "output": "<answer>upset; alone</answer>",
                                       "answer": lenient_words("upset; alone")}) + "\n", encoding="utf-8")
    argv = ["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / "out"),
            "--set", "toy@openset", str(predictions), str(labels), "--allow-missing"]
    with pytest.warns(UserWarning):  # the official reading finds no word: empty denominators
        official = evaluate_tool.main(argv)["datasets"][0]
    assert (official["score"], official["parsed_differently"]) == (0.0, 1)
    assert evaluate_tool.main([*argv, "--lenient-parsing"])["datasets"][0]["score"] == 1.0
