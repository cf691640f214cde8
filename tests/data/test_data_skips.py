"""data.skip_bad_samples in training and evaluation (data.skips.SampleSource): bad media, missing
labels and samples over the length budget are named without skips; with skips they are printed,
counted and replaced by the next loadable sample, and too many of them stop the run."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.errors import DataError, MediaError, MissingLabelError, SampleTooLongError, TooManySkippedError
from megatron_omni.data.manifest import load_manifest, write_manifest
from megatron_omni.data.skips import SampleRules, SampleSource

REPO = Path(__file__).resolve().parents[2]
OPENSET = SampleRules(required=(("openset", "the reward"),))


@pytest.fixture(scope="module")
def clips(toy_set):
    return load_manifest(toy_set.train_manifest)[:6]


@pytest.fixture
def manifest(tmp_path, clips):
    """The first six toy clips, with sample 1's video missing and sample 3 without openset labels."""
    bad = [dataclasses.replace(c, video=tmp_path / "gone.mp4") if i == 1 else
           dataclasses.replace(c, openset=()) if i == 3 else c for i, c in enumerate(clips)]
    return write_manifest(tmp_path / "train.jsonl", bad)


def source(manifest, make_processor, rules=OPENSET, **data):
    return SampleSource(OmniDataset.from_manifest(manifest, make_processor(**data), with_target=False), rules)


@pytest.mark.parametrize("index, error, message", [
    (1, MediaError, "video file not found"),
    (3, MissingLabelError, r"has no 'openset' \(the reward\)"),
])
def test_without_skips_the_error_names_sample_file_and_line(manifest, make_processor, clips, index, error, message):
    with pytest.raises(error, match=message) as info:
        source(manifest, make_processor).load_step([0, index])
    assert f"{manifest}, line {index + 1}" in str(info.value) and clips[index].id in str(info.value)


def test_skipped_samples_are_printed_counted_and_replaced_by_the_next_loadable(manifest, make_processor, clips, capsys):
    src = source(manifest, make_processor, skip_bad_samples=True, max_skipped_fraction=0.5)
    used, items, metrics = src.load_step([1, 2])
    # 1 is bad, its replacement 2 is already this step's: 3 (no openset) is bad too, so 4.
    assert used == [4, 2] and [s.sample_id for s in items] == [clips[4].id, clips[2].id]
    assert metrics == {"skipped_samples": 2.0, "skipped_samples_total": 2.0}
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"[data] skipped sample {clips[1].id} (bad media): ") and "gone.mp4" in lines[0]
    assert lines[1].startswith(f"[data] skipped sample {clips[3].id} (missing label): ") and "line 4" in lines[1]
    # The replacement depends only on the indices: a resumed run draws the same one.
    again = source(manifest, make_processor, skip_bad_samples=True, max_skipped_fraction=0.5)
    assert again.load_step([1, 2])[0] == used
    assert src.load_step([0, 5])[2] == {"skipped_samples": 0.0, "skipped_samples_total": 2.0}


def test_a_resumed_run_counts_on_from_the_checkpointed_state(manifest, make_processor):
    def run(steps, state=None):
        src = source(manifest, make_processor, skip_bad_samples=True, max_skipped_fraction=0.7)
        if state is not None:
            src.load_state_dict(state)
        return [src.load_step(indices)[2] for indices in steps], src.state_dict()

    steps = [[1, 2], [0, 5], [3, 4]]
    whole, _ = run(steps)
    first, state = run(steps[:1])
    rest, _ = run(steps[1:], state)
    assert whole[-1] == {"skipped_samples": 1.0, "skipped_samples_total": 3.0}
    assert first + rest == whole


def test_too_many_skips_stop_with_what_was_skipped_and_why(manifest, make_processor):
    src = source(manifest, make_processor, skip_bad_samples=True, max_skipped_fraction=0.1)
    src.load_step([0, 2])
    with pytest.raises(TooManySkippedError) as info:
        src.load_step([1, 4])  # 1 of 3 seen skipped: more than 0.1 even if the next two load
    message = str(info.value)
    assert "too many samples were skipped (1 of 3 samples seen so far, data.max_skipped_fraction=0.1)" in message
    assert "1 bad media (e.g. " in message and "gone.mp4" in message


def test_a_step_without_any_usable_sample_stops(tmp_path, clips, make_processor):
    gone = write_manifest(tmp_path / "gone.jsonl", [dataclasses.replace(c, video=tmp_path / f"{c.id}.mp4") for c in clips])
    src = source(gone, make_processor, skip_bad_samples=True, max_skipped_fraction=1.0)
    # Sample 1 is the step's own: the search passes over it.
    with pytest.raises(TooManySkippedError, match=r"a step found no usable sample \(5 of 5 samples seen so far"):
        src.load_step([0, 1])


def test_the_length_budget_is_checked_when_the_sample_is_loaded(manifest, make_processor, clips):
    length = source(manifest, make_processor).load(0).length
    rules = SampleRules(max_tokens=length - 1, budget="train.seq_length (9) minus oppo.sampling.max_new_tokens (8)")
    with pytest.raises(SampleTooLongError, match=rf"sample {clips[0].id} has {length} tokens, more than train.seq_length \(9\)"):
        source(manifest, make_processor, rules).load_step([0])
    skipping = source(manifest, make_processor, rules, skip_bad_samples=True, max_skipped_fraction=0.0)
    with pytest.raises(TooManySkippedError, match="over the length budget"):
        skipping.load_step([0])


def test_evaluation_leaves_skipped_samples_out(manifest, make_processor, capsys):
    src = source(manifest, make_processor, SampleRules(), skip_bad_samples=True, max_skipped_fraction=0.5)
    assert src.load_one(0) is not None and src.load_one(1) is None
    src.check()  # 1 of 2
    assert "(bad media)" in capsys.readouterr().out
    assert src.load_one(1) is None
    with pytest.raises(TooManySkippedError, match=r"too many samples were skipped \(2 of 3 samples seen so far"):
        src.check()
    with pytest.raises(DataError):
        source(manifest, make_processor, SampleRules()).load_one(1)


def test_sft_job_whose_media_all_fail_stops_with_the_message(tmp_path, toy_set):
    """The real training entry on a manifest with a wrong media root: it stops at the first step,
    naming what was skipped, instead of training on nothing (lm_loss 0) and exiting 0; its loader
    workers stop with it."""
    moved = [dataclasses.replace(c, video=tmp_path / "elsewhere" / c.video.name, audio=tmp_path / "elsewhere" / c.audio.name)
             for c in load_manifest(toy_set.train_manifest)]
    manifest = write_manifest(tmp_path / "moved.jsonl", moved)
    out = tmp_path / "run"
    proc = subprocess.run([
        sys.executable, "-m", "megatron_omni.cli.train", "--config", "examples/configs/toy_omni_sft.yaml",
        "model.hidden_size=64", "model.ffn_hidden_size=128", "model.mrope_section=[2, 3, 3]", "model.num_layers=1",
        "omni.vision.out_hidden_size=64", "omni.audio.output_dim=64", f"dataset.train_manifest={manifest}",
        f"dataset.tokenizer_dir={toy_set.tokenizer_dir}", "data.skip_bad_samples=true", "data.num_workers=2", "train.steps=2",
        "train.global_batch_size=2", "train.micro_batch_size=1", "optimizer.lr_warmup_steps=0", f"output_dir={out}",
        f"train.save_dir={out / 'ckpt'}", "logging.progress_bar=false", "logging.tensorboard=false",
    ], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    first = moved[[c.id for c in moved].index(proc.stdout.split("[data] skipped sample ")[1].split()[0])]
    assert f"(bad media): {first.video} (sample {first.id} at {manifest}, line" in proc.stdout
    assert "data error: stopping: too many samples were skipped (1 of 1 samples seen so far" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "skipped on this rank: 1 bad media" in proc.stderr
    metrics = out / "metrics.jsonl"
    assert not (out / "ckpt" / "latest").exists() and not (metrics.is_file() and metrics.read_text())
