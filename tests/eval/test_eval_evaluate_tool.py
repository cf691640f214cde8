"""tools/evaluate.py end to end: released label formats, real prediction files, generation hook."""
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from evaluate_cli import evaluate_tool
from official_oracle import hit_rate, wheel_metric
from sklearn.metrics import f1_score

from megatron_omni.eval.mer_unibench import DATASETS
from megatron_omni.eval.predictions import load_predictions
from megatron_omni.eval.valence import LexiconValence


def _scores(summary):
    return {d["dataset"]: d["score"] for d in summary["datasets"]}


def test_generation_then_scoring_from_manifest(tmp_path, fixture_wheel_dir):
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"id": "a", "openset": ["thrilling", "alone"], "answer": "merriment, upset"},
            {"id": "b", "openset": ["upset"], "answer": "upset"},
            {"id": "c", "openset": ["calmly"], "answer": ""}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    calls = []

    def generate(samples, mask_modality=None):
        calls.append([s["id"] for s in samples])
        return [f"<think>looking</think><answer>{s['answer']}</answer>" for s in samples]

    predictions = tmp_path / "preds.jsonl"
    argv = ["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / "out"), "--manifest", str(manifest),
            "--generate-into", str(predictions), "--batch-size", "2",
            "--set", "toy@openset", str(predictions), str(manifest)]
    summary = evaluate_tool.main(argv, generate=generate)
    assert calls == [["a", "b"], ["c"]]
    # wheel1: a {happy,sad} vs {happy,sad} 1/1; b {sad} vs {sad} 1/1; c {happy} vs {} 0/0 -> P=R=2/3
    # wheel2: a {} skipped; b {anger} vs {anger} 1/1; c {joy} vs {} 0/0 -> P=R=1/2
    assert _scores(summary)["toy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert evaluate_tool.main(argv, generate=generate) == summary and len(calls) == 2  # resumed: nothing new
    table = (tmp_path / "out" / "results.md").read_text()
    assert "toy (F_s)" in table and json.loads((tmp_path / "out" / "results.json").read_text()) == summary
    with pytest.raises(SystemExit, match="generate callable"):
        evaluate_tool.main(argv)


def _synthetic_labels(dataset, predictions, rng):
    """Labels in the released format of `dataset` for the samples of a real predictions file."""
    names = sorted(predictions)
    if dataset.kind == "sentiment":
        return {"train_corpus": {}, "test_corpus": {n: {"val": rng.choice([-2.0, -0.6, 0.0, 0.8, 1.4])} for n in names}}
    if dataset.key in ("mer2023", "mer2024"):
        classes = ["happy", "sad", "neutral", "angry", "worried", "surprise"]
        return {"train_corpus": {}, "test1_corpus": {n: {"emo": rng.choice(classes)} for n in names}}
    if dataset.key == "meld":
        return {"train_corpus": {}, "test_corpus": {n: {"emo": rng.randrange(7)} for n in names}}
    # IEMOCAP: the released file holds all five sessions; only session 5 is the test set.
    whole = {n: {"emo": rng.randrange(4)} for n in names}
    whole.update({"Ses01F_extra_%d" % i: {"emo": 0} for i in range(5)})
    return {"whole_corpus": whole}


def test_all_released_prediction_files_score_against_released_label_formats(tmp_path, shared_data, real_lexicon):
    """The eight label files are not public here: synthetic ones in the released layouts stand in.

    Basic-emotion sets are checked against the literal official hit rate, sentiment sets against
    scikit-learn's weighted F1, OV-MERD+ against the official F_s on the 332 public labels.
    """
    rng = random.Random(0)
    release = shared_data / "mer_unibench"
    argv = ["--wheel-dir", str(shared_data / "emotion_wheel"), "--out-dir", str(tmp_path / "out")]
    expected = {}
    for dataset in DATASETS.values():
        predictions_path = release / f"affectgpt_{dataset.key}_predictions.npz"
        if dataset.kind == "openset":
            labels_path = release / "ovmerd_labels_332.csv"
            argv += ["--set", dataset.key, str(predictions_path), str(labels_path)]
            continue
        predictions = load_predictions(predictions_path)
        assert len(predictions) == dataset.size
        labels_path = tmp_path / f"{dataset.key}_{dataset.label_file}"
        np.savez(labels_path, **{k: np.array(v, dtype=object) for k, v in _synthetic_labels(dataset, predictions, rng).items()})
        argv += ["--set", dataset.key, str(predictions_path), str(labels_path)]
        labels = dataset.load_labels(labels_path)
        assert len(labels) == dataset.size
        if dataset.kind == "discrete":
            raw = np.load(predictions_path)
            expected[dataset.title] = hit_rate(str(shared_data / "emotion_wheel"), labels,
                                               dict(zip(raw["filenames"].tolist(), raw["fileitems"].tolist())))
        else:
            kept = [n for n in labels if labels[n] != 0]
            valence = LexiconValence(real_lexicon)([predictions[n] for n in kept])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected[dataset.title] = f1_score([labels[n] > 0 for n in kept], [v > 0 for v in valence],
                                                   average="weighted")
    summary = evaluate_tool.main(argv)
    scores = _scores(summary)
    for title, value in expected.items():
        assert scores[title] == pytest.approx(value, abs=1e-9), title
    with open(release / "ovmerd_labels_332.csv", encoding="utf-8") as handle:
        import csv
        raw_labels = {r["name"]: r["openset"] for r in csv.DictReader(handle)}
    raw = np.load(release / "affectgpt_ovmerdplus_predictions.npz")
    (official_f, _, _), _ = wheel_metric(str(shared_data / "emotion_wheel"), raw_labels,
                                         dict(zip(raw["filenames"].tolist(), raw["fileitems"].tolist())), "level1")
    assert scores["OV-MERD+"] == pytest.approx(official_f, abs=1e-6)
    assert summary["complete"] and summary["mean"] == pytest.approx(100 * np.mean(list(scores.values())))


def test_unknown_dataset_is_rejected(tmp_path, fixture_wheel_dir):
    with pytest.raises(SystemExit, match="unknown data set"):
        evaluate_tool.main(["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path),
                            "--set", "mer2099", "p.npz", "l.npz"])


def _openset_set(tmp_path, predictions: bytes, suffix=".jsonl"):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "a", "openset": ["upset"]}\n{"id": "b", "openset": ["thrilling"]}\n', encoding="utf-8")
    path = tmp_path / f"preds{suffix}"
    path.write_bytes(predictions)
    return path, ["--set", "toy@openset", str(path), str(labels)]


@pytest.mark.parametrize("content, message", [
    (b"", r"preds.jsonl holds no predictions \(--allow-missing scores it anyway\)"),
    (b'{"id": "x", "answer": "upset"}\n', r"none of the 1 predictions in .*preds.jsonl names one of the 2 samples of "
                                          r".*labels.jsonl \(e.g. prediction 'x', label 'a'"),
])
def test_predictions_that_match_nothing_are_an_error_unless_allowed(tmp_path, fixture_wheel_dir, content, message):
    _, scored = _openset_set(tmp_path, content)
    argv = ["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / "out"), *scored]
    with pytest.raises(SystemExit, match=message):
        evaluate_tool.main(argv)
    (result,) = evaluate_tool.main([*argv, "--allow-missing"])["datasets"]
    assert result["score"] == 0 and result["missing_predictions"] == 2


@pytest.mark.parametrize("suffix, content, offset", [
    (".jsonl", b'{"id": "a", "answer": "upset"}\n{"id": "b", "answer": "caf\xe9"}\n', 31 + 26),
    (".csv", b"name,answer\na,upset\n\xff,calm\n", 20),
])
def test_non_utf8_predictions_name_the_file_and_byte_offset(tmp_path, suffix, content, offset):
    path, _ = _openset_set(tmp_path, content, suffix)
    assert content[offset] >= 0x80 and content[:offset].decode("utf-8")
    with pytest.raises(ValueError, match=rf"{path}: not UTF-8 text at byte offset {offset} \(line [23]\)"):
        load_predictions(path)


def test_non_utf8_labels_name_the_file(tmp_path):
    labels = tmp_path / "ovlabel.csv"
    labels.write_bytes(b"name,openset\nsample_1,\xe9mu\n")
    with pytest.raises(ValueError, match=rf"{labels}: not UTF-8 text at byte offset 22 \(line 2\)"):
        DATASETS["ovmerdplus"].load_labels(labels)


def test_duplicate_names_are_an_error_unless_last_wins(tmp_path, fixture_wheel_dir):
    path, scored = _openset_set(tmp_path, b'{"id": "a", "answer": "calm"}\n{"id": "b", "answer": "thrilling"}\n'
                                          b'{"id": "a", "answer": "upset"}\n')
    with pytest.raises(ValueError, match=rf"{path}, line 3: sample 'a' again \(first at {path}, line 1\); --last-wins"):
        load_predictions(path)
    assert load_predictions(path, last_wins=True) == {"a": ["upset"], "b": ["thrilling"]}
    argv = ["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / "out"), *scored]
    with pytest.raises(ValueError, match="again"):
        evaluate_tool.main(argv)
    assert _scores(evaluate_tool.main([*argv, "--last-wins"]))["toy"] == 1.0  # both right once 'a' is its last


def test_samples_skipped_by_generation_get_no_prediction(tmp_path, fixture_wheel_dir, capsys):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "a", "openset": ["upset"]}\n{"id": "b", "openset": ["thrilling"]}\n', encoding="utf-8")
    predictions = tmp_path / "preds.jsonl"
    argv = ["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / "out"), "--manifest", str(manifest),
            "--generate-into", str(predictions), "--set", "toy@openset", str(predictions), str(manifest)]
    (result,) = evaluate_tool.main(argv, generate=lambda samples, mask_modality=None: [
        None if s["id"] == "b" else "<answer>upset</answer>" for s in samples])["datasets"]
    assert [json.loads(line)["id"] for line in predictions.read_text().splitlines()] == ["a"]
    assert result["missing_predictions"] == 1
    assert "generated 1, already present 0, skipped as unusable 1" in capsys.readouterr().err


def test_compare_writes_one_table_and_a_chart_per_set(tmp_path, fixture_wheel_dir):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "a", "openset": ["upset"], "emo": "upset"}\n'
                      '{"id": "b", "openset": ["thrilling"], "emo": "thrilling"}\n', encoding="utf-8")
    runs = {"sft": '{"id": "a", "answer": "upset"}\n{"id": "b", "answer": "alone"}\n',
            "rl": '{"id": "a", "answer": "upset"}\n{"id": "b", "answer": "thrilling"}\n'}
    folders = []
    for name, content in runs.items():
        predictions = tmp_path / f"{name}.jsonl"
        predictions.write_text(content, encoding="utf-8")
        sets = ["--set", "toy@openset", str(predictions), str(labels)]
        if name == "rl":
            sets += ["--set", "basic@discrete", str(predictions), str(labels)]
        evaluate_tool.main(["--wheel-dir", str(fixture_wheel_dir), "--out-dir", str(tmp_path / name / "eval"), *sets])
        folders.append(str(tmp_path / name / "eval"))
    out = tmp_path / "compare"
    result = evaluate_tool.main(["compare", folders[0], f"{folders[1]}/results.json", "--out-dir", str(out),
                                 "--names", "SFT", "RL"])
    # sft: a 1/1 on both wheels, b {sad} vs {happy} 0 on wheel1 -> wheel1 P=R=1/2, wheel2 1 -> F_s 75
    assert result["table"].splitlines()[:4] == [
        "| Checkpoint | toy (F_s) | basic (HIT) | Mean | Sets |", "| --- | --- | --- | --- | --- |",
        "| SFT | 75.00 | - | 75.00 | 1 |", "| RL | 100.00 | 100.00 | 100.00 | 2 |"]
    assert "not comparable" in result["table"] and (out / "compare.md").read_text() == result["table"]
    charts = sorted(Path(p).name for p in result["charts"])
    assert charts == ["compare_basic_hit.png", "compare_mean.png", "compare_toy_f_s.png"]
    assert all((out / c).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)
    with pytest.raises(ValueError, match="no 'datasets' list"):
        (tmp_path / "bad.json").write_text("{}")
        evaluate_tool.main(["compare", str(tmp_path / "bad.json"), "--out-dir", str(out)])
