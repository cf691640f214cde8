"""Checkpoint integrity in one process (a single-rank gloo world): the manifest, a load that falls
back to the next older checkpoint when any kind of file of the newest one is cut short or altered,
stale unfinished saves, and a full disk (a real tmpfs that fills up)."""
import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from megatron_omni.algorithms.lm import LanguageModeling
from megatron_omni.data.text_corpus import TextWindows, generate_sentences
from megatron_omni.models.decoder import build_decoder
from megatron_omni.parallel import set_seed
from megatron_omni.training.checkpoint import CheckpointError, load_latest, remove_stale_tmp, save_checkpoint
from megatron_omni.training.config import RunConfig
from megatron_omni.training.model_setup import build_model_chunks, unwrap
from megatron_omni.training.optimizer import build_optimizer
from megatron_omni.training.step import optimizer_step

REPO = Path(__file__).resolve().parents[2]


class Run:
    """The toy decoder at TP = 1 with its optimizer; ``step`` trains one batch (optimizer state included)."""

    def __init__(self):
        cfg = RunConfig.load(str(REPO / "examples/configs/toy_decoder.yaml"), [
            "parallel.tensor_model_parallel_size=1", "train.seq_length=32", "train.micro_batch_size=4",
            "train.global_batch_size=4"])
        set_seed(cfg.train.seed)
        self.chunks = build_model_chunks(cfg, build_decoder)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.chunks)
        self.lm = LanguageModeling(TextWindows(generate_sentences(16, 0), 32), 4, True)

    def step(self, step: int) -> None:
        batches, _ = self.lm.prepare(list(range(4 * step, 4 * step + 4)), step)
        optimizer_step(self.chunks, self.optimizer, self.scheduler, batches, self.lm.forward_step, 32, 4)

    def weights(self) -> dict:
        return {n: p.detach().clone() for n, p in unwrap(self.chunks[0]).named_parameters()}

    def save(self, folder: Path, step: int) -> Path:
        return save_checkpoint(folder, step, self.chunks, self.optimizer, {"marker": step})

    def load(self, folder: Path):
        return load_latest(folder, self.chunks, self.optimizer)


@pytest.fixture(scope="module")
def saved(single_process, tmp_path_factory):
    """A run, and a folder with its checkpoints of steps 1 and 2 (different weights), each step's weights."""
    run, folder, weights = Run(), tmp_path_factory.mktemp("saved"), {}
    for step in (1, 2):
        run.step(step)
        weights[step] = run.weights()
        run.save(folder, step)
    return run, folder, weights


def test_manifest_lists_every_file_with_size_and_checksum(saved):
    run, folder, _ = saved
    ckpt = folder / "iter_0000002"
    manifest = json.loads((ckpt / "COMPLETE").read_text())
    on_disk = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()} - {"COMPLETE"}
    assert set(manifest["files"]) == on_disk and manifest["step"] == 2
    kinds = {"run_state.pt", "rng/rank00000.pt", "common.pt", "metadata.json", ".metadata"}
    assert kinds <= on_disk and any(name.endswith(".distcp") for name in on_disk)
    for name, entry in manifest["files"].items():
        data = (ckpt / name).read_bytes()
        assert entry == {"size": len(data), "crc32": zlib.crc32(data)}


# One file of each kind; "cut" truncates it (the manifest then disagrees), "cut+manifest" also
# rewrites the manifest to match, so the load itself must fail and be caught.
KINDS = ["__0_0.distcp", ".metadata", "common.pt", "metadata.json", "run_state.pt", "rng/rank00000.pt"]


def rewrite_manifest(ckpt: Path) -> None:
    manifest = json.loads((ckpt / "COMPLETE").read_text())
    for name in manifest["files"]:
        data = (ckpt / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "crc32": zlib.crc32(data)}
    (ckpt / "COMPLETE").write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind, how", [(k, "cut") for k in [*KINDS, "COMPLETE"]] + [(k, "cut+manifest") for k in KINDS])
def test_a_broken_newest_checkpoint_falls_back_to_the_older_one(saved, tmp_path, capsys, kind, how):
    run, folder, weights = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    newest = copy / "iter_0000002"
    target = newest / kind
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    if how == "cut+manifest":
        rewrite_manifest(newest)
    ckpt, run_state = run.load(copy)
    assert ckpt == copy / "iter_0000001" and run_state["marker"] == 1
    assert all(torch.equal(weights[1][n], w) for n, w in run.weights().items())
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "unusable" in ln]
    assert line.startswith(f"[checkpoint] unusable checkpoint {newest}: ")
    assert line.endswith(f"loading the next older complete one, {copy / 'iter_0000001'}")
    if how == "cut" or kind in ("run_state.pt", "rng/rank00000.pt"):
        assert str(target) in line  # the file itself is named


def test_a_changed_byte_is_a_checksum_mismatch(saved, tmp_path, capsys):
    run, folder, _ = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    shard = copy / "iter_0000002" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert run.load(copy)[0] == copy / "iter_0000001"
    assert f"{shard}: checksum mismatch" in capsys.readouterr().out


def test_a_checkpoint_from_before_manifests_loads_unverified(saved, tmp_path, capsys):
    run, folder, weights = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    (copy / "iter_0000002" / "COMPLETE").write_text("2")  # what saves wrote before the manifest
    assert run.load(copy)[0] == copy / "iter_0000002"
    assert all(torch.equal(weights[2][n], w) for n, w in run.weights().items())
    assert f"{copy / 'iter_0000002'} has no manifest (an older save): loading it unverified" in capsys.readouterr().out


def test_no_usable_checkpoint_is_an_error_naming_each(saved, tmp_path):
    run, folder, _ = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    for step in (1, 2):
        (copy / f"iter_{step:07d}" / "run_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no usable checkpoint") as err:
        run.load(copy)
    assert all(str(copy / f"iter_{step:07d}" / "run_state.pt") in str(err.value) for step in (1, 2))


def test_stale_unfinished_saves_are_removed(single_process, tmp_path, capsys):
    (tmp_path / "tmp.iter_0000007" / "rng").mkdir(parents=True)
    (tmp_path / "tmp.iter_0000007" / "common.pt").write_bytes(b"x" * 1000)
    (tmp_path / "latest.tmp").write_text("iter_0000007")
    (tmp_path / "iter_0000006").mkdir()
    remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000006"]
    assert f"removed {tmp_path / 'tmp.iter_0000007'}, an unfinished save" in capsys.readouterr().out


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_names_the_folder_and_the_bytes_needed(saved, small_tmpfs):
    run, folder, _ = saved
    written = sum(p.stat().st_size for p in (folder / "iter_0000002").rglob("*") if p.is_file())
    assert written > 1 << 20  # does not fit
    with pytest.raises(CheckpointError, match=f"no space left on the device of {small_tmpfs} saving step 3") as err:
        run.save(small_tmpfs, 3)
    needed = int(str(err.value).split("needs about ")[1].split(" bytes")[0].replace(",", ""))
    assert 0.8 * written < needed < 1.2 * written, (needed, written)
    assert list(small_tmpfs.iterdir()) == []  # the failed save gave its space back
