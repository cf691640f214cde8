"""Label loaders (released formats and JSONL manifests), prediction readers, resumable writer."""
import json

import numpy as np
import pytest

from megatron_omni.eval.generation import generate_predictions
from megatron_omni.eval.labels import (
    LabelFileError,
    load_emotion_labels,
    load_iemocap_four,
    load_manifest_labels,
    load_openset_csv,
    load_valence_labels,
)
from megatron_omni.eval.mer_unibench import DATASETS
from megatron_omni.eval.predictions import PredictionFileError, PredictionsJsonl, load_predictions


def save_corpora(path, **corpora):
    np.savez(path, **{key: np.array(value, dtype=object) for key, value in corpora.items()})
    return path


def test_released_npz_label_formats(tmp_path):
    mer = save_corpora(tmp_path / "label-6way.npz", train_corpus={"t": {"emo": "sad", "val": -1}},
                       test1_corpus={"s1": {"emo": "happy", "val": 2.0}, "s2": {"emo": "worried", "val": -1}})
    assert load_emotion_labels(mer) == {"s1": "happy", "s2": "worried"}
    meld = save_corpora(tmp_path / "label.npz", train_corpus={}, test_corpus={"d0": {"emo": 1}, "d1": {"emo": 6}})
    assert DATASETS["meld"].load_labels(meld) == {"d0": "joy", "d1": "surprise"}
    iemocap = save_corpora(tmp_path / "label_4way.npz", whole_corpus={
        "Ses01F_a": {"emo": 0}, "Ses05F_b": {"emo": 3}, "Ses05M_c": {"emo": 1}})
    assert load_iemocap_four(iemocap) == {"Ses05F_b": "anger", "Ses05M_c": "sad"}
    sims = save_corpora(tmp_path / "sims.npz", train_corpus={}, test_corpus={"v": {"val": -0.8}, "w": {"val": 0}})
    assert load_valence_labels(sims) == {"v": -0.8, "w": 0.0}


def test_label_errors_name_file_and_field(tmp_path):
    bad = save_corpora(tmp_path / "label.npz", test_corpus={"x": {"emotion": "happy"}})
    with pytest.raises(LabelFileError, match=r"label.npz: sample 'x' of 'test_corpus' has no 'val'"):
        load_valence_labels(bad)
    with pytest.raises(LabelFileError, match=r"no 'test1_corpus' entry; entries: \['test_corpus'\]"):
        load_emotion_labels(bad)
    with pytest.raises(LabelFileError, match="outside the 7 classes"):
        DATASETS["meld"].load_labels(save_corpora(tmp_path / "m.npz", test_corpus={"d": {"emo": 9}}))
    with pytest.raises(LabelFileError, match="not found"):
        load_valence_labels(tmp_path / "absent.npz")


def test_openset_csv_and_manifest_labels(tmp_path):
    csv_path = tmp_path / "ovlabel.csv"
    csv_path.write_text('name,openset\nsample_1,"[\'Happy\', \'relieved\']"\nsample_2,\n', encoding="utf-8")
    assert load_openset_csv(csv_path) == {"sample_1": ["happy", "relieved"], "sample_2": []}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "openset": ["Sad"], "emo": "sad", "val": -1.5}) + "\n\n"
                        + json.dumps({"id": 7, "openset": [], "emo": "happy", "val": 2}) + "\n", encoding="utf-8")
    assert load_manifest_labels(manifest, "openset") == {"a": ["sad"], "7": []}
    assert load_manifest_labels(manifest, "discrete") == {"a": "sad", "7": "happy"}
    assert load_manifest_labels(manifest, "sentiment") == {"a": -1.5, "7": 2}
    manifest.write_text('{"id": "a", "val": "high"}\n{"id": "b"\n', encoding="utf-8")
    with pytest.raises(LabelFileError, match=r"m.jsonl, line 1: 'val' must be a number"):
        load_manifest_labels(manifest, "sentiment")
    with pytest.raises(LabelFileError, match=r"m.jsonl, line 1: missing field\(s\) \['openset'\]"):
        load_manifest_labels(manifest, "openset")


def test_prediction_readers(tmp_path):
    npz = tmp_path / "p.npz"
    np.savez(npz, filenames=np.array(["a", "b"]), fileitems=np.array(["[happy, sad]", "[]"]))
    assert load_predictions(npz) == {"a": ["happy", "sad"], "b": []}
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("name,output\na,<think>x</think><answer>Calm, calm</answer>\nb,angry\n", encoding="utf-8")
    assert load_predictions(csv_path) == {"a": ["calm"], "b": ["angry"]}
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"id": "a", "answer": ["Joy"]}\n{"id": "b", "output": "<answer>fear</answer>"}\n')
    assert load_predictions(jsonl) == {"a": ["joy"], "b": ["fear"]}
    jsonl.write_text('{"id": "a", "text": "joy"}\n')
    with pytest.raises(PredictionFileError, match=r"p.jsonl, line 1: no prediction field"):
        load_predictions(jsonl)
    with pytest.raises(PredictionFileError, match="unsupported predictions format"):
        load_predictions(_touch(tmp_path / "p.txt"))


def _touch(path):
    path.write_text("")
    return path


class FakeGenerator:
    """Deterministic stand-in for the model: records the ids it was asked for."""

    def __init__(self, fail_after_batches=None):
        self.batches = []
        self.fail_after_batches = fail_after_batches

    def __call__(self, samples, mask_modality=None):
        if self.fail_after_batches is not None and len(self.batches) == self.fail_after_batches:
            raise RuntimeError("simulated crash")
        self.batches.append([s["id"] for s in samples])
        return [f"<think>{s['subtitle']}</think><answer>{s['guess']}</answer>" for s in samples]


def test_generation_is_batched_and_resumable(tmp_path):
    samples = [{"id": f"s{i}", "subtitle": f"line {i}", "guess": "happy, Calm"} for i in range(7)]
    writer = PredictionsJsonl(tmp_path / "preds.jsonl")
    crashing = FakeGenerator(fail_after_batches=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_predictions(samples, crashing, writer, batch_size=3)
    assert writer.done_ids() == {"s0", "s1", "s2", "s3", "s4", "s5"}
    # a crash in the middle of a write leaves a cut line: it is dropped on reopening
    with open(tmp_path / "preds.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "s6", "outp')
    resumed = FakeGenerator()
    report = generate_predictions(samples, resumed, PredictionsJsonl(tmp_path / "preds.jsonl"), batch_size=3)
    assert resumed.batches == [["s6"]]
    assert (report.generated, report.skipped) == (1, 6)
    records = PredictionsJsonl(tmp_path / "preds.jsonl").records()
    assert [r["id"] for r in records] == [f"s{i}" for i in range(7)]
    assert records[0]["answer"] == ["happy", "calm"]
    assert load_predictions(tmp_path / "preds.jsonl")["s6"] == ["happy", "calm"]
    again = FakeGenerator()
    assert generate_predictions(samples, again, PredictionsJsonl(tmp_path / "preds.jsonl")).generated == 0
    assert again.batches == []


def test_generation_rejects_wrong_output_count(tmp_path):
    with pytest.raises(ValueError, match="returned 0 outputs for a batch of 1"):
        generate_predictions([{"id": "a"}], lambda samples, mask_modality=None: [],
                             PredictionsJsonl(tmp_path / "p.jsonl"))
