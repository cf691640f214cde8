"""Loading the samples of a step under ``data.skip_bad_samples``: bad ones are reported, counted
and replaced, and the run stops when too many are bad.

A sample is bad when its media fail to load, when it lacks a label the algorithm reads (the
rules' ``required`` fields) or when it is over the run's length budget (``max_tokens``: the whole
SFT sequence, or an RL prompt plus its completion). Without skips the first bad sample raises its
`DataError`, which names the sample (id, manifest file and line).

With skips, training keeps every step's shape (the same number of samples on every rank and in
every micro-batch, as pipeline stages and rollout groups need): a bad sample is replaced by the
next loadable sample after it in manifest order that this rank's share of the step does not hold
yet. The choice depends only on the step's indices and the data, so a resumed run makes it
again. The share is judged on the samples every data-parallel rank has seen since the run began
(the counts are checkpointed, `state_dict`), plus what this rank's step has loaded: when more
than ``data.max_skipped_fraction`` of them were skipped (or would be, whatever the rest of the
step loads), or no loadable sample is left, every rank stops the run together (one small
all-reduce per step) with a `TooManySkippedError` saying what was skipped and why. Evaluation
leaves a bad sample out and judges the share after each batch.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.errors import DataError, MediaError, MissingLabelError, SampleTooLongError, TooManySkippedError
from megatron_omni.data.prefetch import SamplePool
from megatron_omni.data.processor import ProcessedSample
from megatron_omni.parallel.device import step_device

_KINDS = ((MediaError, "bad media"), (MissingLabelError, "missing label"), (SampleTooLongError, "over the length budget"))


def skip_kind(exc: DataError) -> str:
    return next((name for cls, name in _KINDS if isinstance(exc, cls)), "bad content")


@dataclass(frozen=True)
class SampleRules:
    """What a run needs of each sample besides loadable media."""

    required: tuple[tuple[str, str], ...] = ()  # (OmniSample field that must be non-empty, what reads it)
    max_tokens: int | None = None
    budget: str = ""  # where max_tokens comes from, e.g. "train.seq_length (320)"


class SampleSource:
    """Processed samples of a data set under the run's rules and its skip settings.

    ``group``: the data-parallel group whose ranks stop together (None: this process alone).
    ``announce``: this process prints the skip lines (one process per data-parallel slice).
    """

    def __init__(self, dataset: OmniDataset, rules: SampleRules = SampleRules(), *, group=None, announce: bool = True):
        cfg = dataset.processor.cfg
        self.dataset, self.rules = dataset, rules
        self.skip, self.max_fraction = cfg.skip_bad_samples, cfg.max_skipped_fraction
        self.group, self.announce = group, announce
        # Training: the group's counts before this step plus this rank's in the step (evaluation:
        # this process's).
        self.seen = self.skipped = 0
        self.kinds: Counter[str] = Counter()  # this process's, for the stop message
        self.examples: dict[str, str] = {}  # kind -> its first reason
        self.total_seen = self.total_skipped = 0  # over the group's ranks, since the run began
        # data.num_workers > 0: a training step's samples load in worker processes, started at the
        # first step (evaluation, which never prefetches, loads in this process).
        self.num_workers = cfg.num_workers
        self.pool: SamplePool | None = None

    def state_dict(self) -> dict:
        return {"seen": self.total_seen, "skipped": self.total_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.total_seen, self.total_skipped = state["seen"], state["skipped"]

    def load(self, index: int) -> ProcessedSample:
        """Sample ``index`` under the rules; raises a `DataError` naming the sample."""
        sample = self.dataset.samples[index]
        for name, reader in self.rules.required:
            if not getattr(sample, name):
                raise MissingLabelError(f"{sample.location}: sample {sample.id} has no '{name}' ({reader})")
        item = self.pool.load(index) if self.pool is not None else self.dataset.load(index)
        limit = self.rules.max_tokens
        if limit is not None and item.length > limit:
            raise SampleTooLongError(f"{sample.location}: sample {sample.id} has {item.length} tokens, "
                                     f"more than {self.rules.budget}")
        return item

    def prefetch(self, indices: list[int]) -> None:
        """Start loading a coming step's ``indices`` in the worker processes (none without workers).
        Nothing is counted until `load_step` takes the samples, so prefetched samples no step takes
        change neither the skip counts nor the sampler's position."""
        if self.num_workers:
            self._workers().prefetch(indices)

    def _workers(self) -> SamplePool:
        if self.pool is None:
            self.pool = SamplePool(self.dataset, self.num_workers)
        return self.pool

    def close(self) -> None:
        """Stop the worker processes (the training loop calls it however the run ends)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _try(self, index: int) -> ProcessedSample | None:
        self.seen += 1
        try:
            return self.load(index)
        except DataError as exc:
            if not self.skip:
                raise
            kind, reason = skip_kind(exc), str(exc).splitlines()[0]
            self.skipped += 1
            self.kinds[kind] += 1
            self.examples.setdefault(kind, reason)
            if self.announce:
                print(f"[data] skipped sample {self.dataset.samples[index].id} ({kind}): {reason}", flush=True)
            return None

    def _over_limit(self, pending: int = 0) -> bool:
        """More than the allowed share skipped, even if the next ``pending`` samples all load."""
        return self.skipped > self.max_fraction * (self.seen + pending)

    def load_one(self, index: int) -> ProcessedSample | None:
        """One sample for evaluation, None when skipped (`check` judges the share afterwards)."""
        return self._try(index)

    def check(self, elsewhere: tuple[int, int] = (0, 0)) -> None:
        """Evaluation: stop once more than the allowed share of the samples seen so far was skipped.
        ``elsewhere``: (seen, skipped) by other processes since the last check (the other data-parallel
        replicas of the same evaluation), so every process judges the same share."""
        self.seen, self.skipped = self.seen + elsewhere[0], self.skipped + elsewhere[1]
        self.total_seen, self.total_skipped = self.seen, self.skipped
        if self._over_limit():
            raise TooManySkippedError(self._stop_message("too many samples were skipped"))

    def load_step(self, indices: list[int]) -> tuple[list[int], list[ProcessedSample], dict[str, float]]:
        """This rank's samples of a training step, bad ones replaced: (indices used, samples, metrics)."""
        self.seen, self.skipped = seen, skipped = self.total_seen, self.total_skipped
        if self.num_workers:  # the step's own samples load side by side (prefetched already, usually)
            self._workers().request(indices)
        taken = set(indices)  # a replacement is none of the step's own samples
        used: list[int] = []
        items: list[ProcessedSample] = []
        size = len(self.dataset)
        exhausted = False
        for slot, index in enumerate(indices):
            chosen, item = index, self._try(index)
            # Looking further is pointless once the share is exceeded whatever the remaining slots load.
            for offset in range(1, size):
                if item is not None or self._over_limit(pending=len(indices) - slot):
                    break
                chosen = (index + offset) % size
                if chosen not in taken:
                    item = self._try(chosen)
            if item is None:
                exhausted = not self._over_limit(pending=len(indices) - slot)
                break
            taken.add(chosen)
            used.append(chosen)
            items.append(item)
        over = self._over_limit()
        counts = [self.seen - seen, self.skipped - skipped, float(over), float(exhausted)]
        if self.group is not None and self.skip:  # without skips a bad sample has raised already
            reduced = torch.tensor(counts, dtype=torch.float64, device=step_device())
            dist.all_reduce(reduced, group=self.group)
            counts = reduced.tolist()  # the stop decision is made in Python
        step_seen, step_skipped, over_anywhere, exhausted_anywhere = (int(c) for c in counts)
        self.total_seen += step_seen
        self.total_skipped += step_skipped
        if over_anywhere or exhausted_anywhere:
            problem = "too many samples were skipped" if over_anywhere else "a step found no usable sample"
            raise TooManySkippedError(self._stop_message(problem))
        return used, items, {"skipped_samples": float(step_skipped), "skipped_samples_total": float(self.total_skipped)}

    def _stop_message(self, problem: str) -> str:
        kinds = "; ".join(f"{count} {kind} (e.g. {self.examples[kind]})" for kind, count in self.kinds.most_common())
        kinds = kinds or "none (another data-parallel rank's samples)"
        return (f"stopping: {problem} ({self.total_skipped} of {self.total_seen} samples seen so far, "
                f"data.max_skipped_fraction={self.max_fraction}); skipped on this rank: {kinds}")
