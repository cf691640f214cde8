"""data.num_workers: a training step's samples load in worker processes, the next step's ahead of
time, and the run sees what it sees without workers: the same samples in the same order, the same
skips, lines and counts, the same resume; the workers stop with the run."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import multiprocessing
import signal
import time

import psutil
import pytest
import torch

from megatron_omni.data import prefetch
from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.errors import MediaError
from megatron_omni.data.manifest import load_manifest, write_manifest
from megatron_omni.data.prefetch import SamplePool
from megatron_omni.data.processor import OmniProcessor
from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.data.skips import SampleRules, SampleSource
from megatron_omni.data.toy import toy_data_config

STEPS = 5  # of 2 samples from 8: more than an epoch, so the corrupt and the missing file come up


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, toy_set):
    """Eight toy clips; clip 1's video is missing and clip 5's is corrupt (random bytes)."""
    folder = tmp_path_factory.mktemp("prefetch")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0),
                                                                     dtype=torch.uint8).numpy().tobytes())
    clips = load_manifest(toy_set.train_manifest)[:8]
    bad = {1: folder / "gone.mp4", 5: corrupt}
    clips = [dataclasses.replace(c, video=bad[i], audio=None) if i in bad else c for i, c in enumerate(clips)]
    return write_manifest(folder / "train.jsonl", clips)


def fresh(manifest, make_processor, workers: int, skip: bool = True):
    processor = make_processor(num_workers=workers, skip_bad_samples=skip, max_skipped_fraction=0.5)
    source = SampleSource(OmniDataset.from_manifest(manifest, processor), SampleRules(max_tokens=10_000, budget="a test"))
    return source, ResumableBatchSampler(len(source.dataset), global_batch_size=2, seed=4)


def train_steps(source, sampler, steps: int) -> list:
    """What the training loop does with the source: draw, prefetch the next batch, load this one."""
    out = []
    for step in range(steps):
        indices = sampler.next_indices()
        if step + 1 < steps:
            source.prefetch(sampler.indices_at(sampler.consumed_samples))
        used, items, metrics = source.load_step(indices)
        out.append((used, metrics, [content(item) for item in items]))
    return out


def content(item) -> dict:
    media = item.media
    return {"id": item.sample_id, "tokens": item.input_ids, "labels": item.labels, "positions": item.position_ids,
            "video": media.video.pixel_values if media.video is not None else None,
            "audio": media.audio_features}


def assert_same_steps(actual: list, expected: list) -> None:
    assert [(used, metrics) for used, metrics, _ in actual] == [(used, metrics) for used, metrics, _ in expected]
    for (_, _, items), (_, _, reference) in zip(actual, expected):
        for item, ref in zip(items, reference):
            assert item.keys() == ref.keys()
            for key, value in item.items():
                assert (value == ref[key]) if not isinstance(value, torch.Tensor) else torch.equal(value, ref[key]), key


@pytest.fixture(scope="module")
def in_process(manifest, toy_tokenizer):
    """The run without workers: its steps, the skip lines it printed and its checkpointed counts."""
    source, sampler = fresh(manifest, lambda **o: OmniProcessor(toy_tokenizer, toy_data_config(**o)), workers=0)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        steps = train_steps(source, sampler, STEPS)
    assert source.pool is None
    return steps, printed.getvalue(), source.state_dict()


def workers_of(pool: SamplePool) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in pool._executor._processes]


def test_two_workers_load_the_batches_and_skips_of_none(manifest, make_processor, in_process, capsys):
    steps, printed, state = in_process
    assert "corrupt.mp4" in printed and "video file not found" in printed  # both bad clips came up
    source, sampler = fresh(manifest, make_processor, workers=2)
    assert_same_steps(train_steps(source, sampler, STEPS), steps)
    assert source.state_dict() == state
    assert capsys.readouterr().out == printed
    workers = workers_of(source.pool)
    assert len(workers) == 2 and all(w.is_running() for w in workers)
    source.close()
    assert not any(w.is_running() for w in workers)


def test_without_skips_a_worker_raises_the_error_of_the_process_itself(manifest, make_processor):
    dataset = OmniDataset.from_manifest(manifest, make_processor())
    with pytest.raises(MediaError) as direct:
        dataset.load(5)
    source, _ = fresh(manifest, make_processor, workers=2, skip=False)
    try:
        source.prefetch([5])
        with pytest.raises(MediaError) as remote:
            source.load_step([0, 5])
    finally:
        source.close()
    assert str(remote.value) == str(direct.value) and "corrupt.mp4" in str(remote.value)


def test_a_stopped_run_with_workers_resumes_exactly(manifest, make_processor, in_process):
    """Stopped after step 2 with step 3's samples already prefetched: the checkpointed sampler
    and skip counts resume at step 3, and the whole equals the uninterrupted run."""
    source, sampler = fresh(manifest, make_processor, workers=2)
    first = train_steps(source, sampler, 2)
    source.prefetch(sampler.indices_at(sampler.consumed_samples))  # the loop's read-ahead of step 3
    checkpoint = {"sampler": sampler.state_dict(), "samples": source.state_dict()}
    source.close()
    resumed, resumed_sampler = fresh(manifest, make_processor, workers=2)
    resumed_sampler.load_state_dict(checkpoint["sampler"])
    resumed.load_state_dict(checkpoint["samples"])
    rest = train_steps(resumed, resumed_sampler, STEPS - 2)
    resumed.close()
    assert_same_steps(first + rest, in_process[0])


def _pool_then_wait(manifest_path, make_processor, pids) -> None:
    pool = SamplePool(OmniDataset.from_manifest(manifest_path, make_processor()), 2)
    pool.load(0)
    pids.send([w.pid for w in workers_of(pool)])
    time.sleep(60)


def _slow_start_worker(*args):
    time.sleep(0.5)  # a worker forked but not yet ignoring the stop signals (a loaded machine)
    prefetch._start_worker(*args)


def test_workers_ignore_sigterm_and_die_with_the_training_process(manifest, make_processor):
    """SLURM signals every process of a job step: the workers leave the stop to the trainer
    (which checkpoints, then closes them), also one signalled before its start-up ends; a trainer
    killed outright takes its workers with it."""
    pool = SamplePool(OmniDataset.from_manifest(manifest, make_processor()), 2)
    pool._executor._initializer = _slow_start_worker
    pool.request([0])  # forks both workers, each now in its slow start
    workers = workers_of(pool)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert pool.load(2).sample_id and all(w.is_running() for w in workers)
    pool.close()

    fork = multiprocessing.get_context("fork")
    receive, send = fork.Pipe(duplex=False)
    trainer = fork.Process(target=_pool_then_wait, args=(manifest, make_processor, send))
    trainer.start()
    assert receive.poll(30)
    pids = receive.recv()
    assert len(pids) == 2
    trainer.kill()
    trainer.join()
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10)
    assert not alive


class Stuck:
    """A data set whose samples never finish loading (a decoder that hangs)."""

    samples = ()

    def load(self, index):
        time.sleep(600)


def test_closing_does_not_wait_for_a_hung_worker():
    pool = SamplePool(Stuck(), 2)
    pool.request([0, 1])
    workers = workers_of(pool)
    time.sleep(0.3)  # both workers are inside load
    started = time.monotonic()
    pool.close(timeout=0.5)
    assert time.monotonic() - started < 5 and not any(w.is_running() for w in workers)
