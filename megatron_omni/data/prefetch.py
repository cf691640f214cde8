"""Samples decoded and processed in worker processes ahead of the step that uses them
(``data.num_workers > 0``).

A `SamplePool` loads samples by index in forked worker processes and hands each result back to
whoever asks for that index: the processed sample, or the exception its loading raised (a
`DataError` arrives as itself, with its message). Nothing is judged or counted here:
`SampleSource` asks the pool where it would otherwise load in its own process, so skips,
replacements and their counts are those of a run without workers, and the sampler's position,
which only the training loop advances, never depends on what was prefetched. A prefetched
sample that no step takes (a run that stops, a step whose indices changed) is dropped.

Workers run one intra-op thread each (they decode side by side already), ignore SIGINT and
SIGTERM (the training process decides when to stop, then closes the pool) and are killed when
the training process dies (``PR_SET_PDEATHSIG``), so a killed run leaves no worker behind.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.processor import ProcessedSample

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_dataset: OmniDataset | None = None  # the worker's copy, inherited through fork


def _start_worker(dataset: OmniDataset, parent: int) -> None:
    global _dataset
    _dataset = dataset
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked since the fork (SamplePool.request)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


def _load(index: int) -> ProcessedSample:
    return _dataset.load(index)


class SamplePool:
    """``num_workers`` processes that load samples of ``dataset`` by index."""

    def __init__(self, dataset: OmniDataset, num_workers: int):
        # fork: the workers inherit the data set (tokenizer, manifest) instead of unpickling it, and
        # start in milliseconds. They only decode and tokenise, never touch the process groups or CUDA.
        self.dataset = dataset
        self._executor = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_start_worker, initargs=(dataset, os.getpid()))
        self._pending: dict[int, Future] = {}
        self._last_prefetch: set[int] = set()

    def request(self, indices: list[int]) -> None:
        """Start loading every index of ``indices`` that is not loading yet."""
        # The first submission forks the workers. A stop signal between a worker's fork and its
        # initializer would kill it (the pool then breaks): the signals stay blocked over the
        # submissions, the workers inheriting the block until they ignore both, and one sent to
        # this process meanwhile arrives when they are unblocked here.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            for index in indices:
                if index not in self._pending:
                    self._pending[index] = self._executor.submit(_load, index)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def prefetch(self, indices: list[int]) -> None:
        """Start loading the next step's ``indices``. What is still pending from before the previous
        prefetch was not taken by the step it was meant for and is dropped, so at most two steps'
        samples wait here."""
        keep = set(indices) | self._last_prefetch
        for index in [i for i in self._pending if i not in keep]:
            self._pending.pop(index).cancel()
        self._last_prefetch = set(indices)
        self.request(indices)

    def load(self, index: int) -> ProcessedSample:
        """Sample ``index``, as ``dataset.load(index)`` would give it (or raise) in this process."""
        self.request([index])
        try:
            return self._pending.pop(index).result()
        except BrokenProcessPool as exc:
            sample = self.dataset.samples[index]
            raise RuntimeError(f"a data.num_workers worker process died while loading sample {sample.id} "
                               f"({sample.location}); out of memory? lower data.num_workers") from exc

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: queued loads are cancelled, a running one may finish its sample within
        ``timeout`` seconds, then its worker is killed (a decoder that hangs must not hang the run)."""
        self._pending.clear()
        workers = list(self._executor._processes.values())  # the executor forgets them on shutdown
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join()
        self._executor.shutdown(wait=True)
