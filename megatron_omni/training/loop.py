"""The training loop: resume, step, log, checkpoint. Algorithms supply batches and the forward.

An algorithm object has two methods:
  prepare(indices, step) -> (micro-batches, metrics): everything before the loss forward
      (collation; for RL: rollouts, rewards and the no-grad scoring forwards);
  forward_step(micro_batch, model) -> (output, loss_func): the megatron forward step.
and optionally
  mini_batches(micro-batches) -> [micro-batches of each optimizer step]: a batch gives several
      optimizer steps, in this order (PPO mini-batches and epochs); without it, one;
  draws_prompts: true when prepare takes ``draw``, a callable returning this rank's indices of the
      sampler's next global batch (DAPO's dynamic sampling refills its batch through it, so the
      sampler's one position still describes the whole run);
  checkpointed_models() -> {name: model chunks}: further models the algorithm trains besides the
      policy (an EMA teacher), saved and resumed with the checkpoint;
  microbatch_rows: the rows of a micro-batch when they are not train.micro_batch_size (RL:
      micro_batch_size prompts x group_size completions), the pipeline's activation shape;
  sample_source: the `data.skips.SampleSource` prepare loads its samples from; the loop has it
      start loading the next batch's samples (in data.num_workers worker processes) before this
      batch's prepare, and closes it when the run ends, however it ends;
  state_dict() / load_state_dict(state): its host-side state (the counts of skipped samples), the
      same on every rank, saved with rank 0's run state.
A train step is one batch from the sampler; checkpoints, ``train.save_interval``,
``train.exit_at_step`` and SIGTERM stops fall between batches, never between the optimizer steps
of one batch.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.parallel.device import step_device
from megatron_omni.training.checkpoint import load_latest, remove_stale_tmp, save_checkpoint, start_writer_helper
from megatron_omni.training.config import RunConfig
from megatron_omni.training.metrics import MetricsLogger
from megatron_omni.training.step import combine_updates, optimizer_step


class Algorithm(Protocol):
    def prepare(self, indices: list[int], step: int) -> tuple[list, dict]: ...

    def forward_step(self, micro_batch, model): ...


@dataclass
class TrainState:
    step: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0


class StopRequest:
    """SIGTERM (SLURM preemption, torchrun shutdown) asks the run to checkpoint and stop.

    The handler only sets a flag; the loop agrees on it across ranks after each step (one tiny
    all-reduce on the training group's device), so every rank saves the same step and leaves
    together. The launcher waits ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (torchrun's default 30)
    after passing SIGTERM on before it kills the ranks: that step and its save must fit in it, and
    `over_grace` says when they did not.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.requested else 0.0], device=step_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)

    @staticmethod
    def over_grace(step_s: float, save_s: float) -> str | None:
        """The warning when a step plus a save take longer than the launcher's grace time, else None."""
        grace = float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 30))
        if step_s + save_s <= grace:
            return None
        return (f"[train] warning: a step ({step_s:.1f} s) and a checkpoint ({save_s:.1f} s) take longer than the {grace:g} s "
                "the launcher waits after SIGTERM before it kills the ranks: a preempted run would lose the steps since its "
                "last checkpoint. Raise TORCH_ELASTIC_SHUTDOWN_TIMEOUT and SLURM's --signal lead time (docs/OPERATIONS.md)")


def checkpointed_models(algorithm) -> dict:
    return algorithm.checkpointed_models() if hasattr(algorithm, "checkpointed_models") else {}


def resume_if_possible(cfg: RunConfig, model_chunks, optimizer, scheduler, sampler: ResumableBatchSampler,
                       algorithm: Algorithm, extra_models: dict) -> TrainState:
    """Load the newest usable checkpoint from ``train.load_dir`` (or ``train.save_dir``), after
    removing the unfinished saves an earlier run left in ``train.save_dir``."""
    if cfg.train.save_dir:
        remove_stale_tmp(cfg.train.save_dir)
    folder = cfg.train.load_dir or cfg.train.save_dir
    found = load_latest(folder, model_chunks, optimizer, extra_models) if folder else None
    if found is None:
        return TrainState()
    ckpt, run_state = found
    scheduler.load_state_dict(run_state["scheduler"])
    sampler.load_state_dict(run_state["sampler"])
    if run_state.get("algorithm") is not None and hasattr(algorithm, "load_state_dict"):
        algorithm.load_state_dict(run_state["algorithm"])
    _say(f"[train] resumed from {ckpt} at step {run_state['step']}")
    return TrainState(step=run_state["step"], nonfinite_total=run_state.get("nonfinite_total", 0))


def train(cfg: RunConfig, model_chunks, optimizer, scheduler, sampler: ResumableBatchSampler, algorithm: Algorithm) -> list[dict]:
    """Run ``cfg.train.steps`` batches (continuing a resumed run), each of one or more optimizer
    steps; returns this run's metrics per batch."""
    t = cfg.train
    extra_models = checkpointed_models(algorithm)
    state = resume_if_possible(cfg, model_chunks, optimizer, scheduler, sampler, algorithm, extra_models)
    if t.save_dir:
        start_writer_helper()
    rank0 = dist.get_rank() == 0
    logger = MetricsLogger(cfg.output_dir, cfg.logging, t.steps, state.step, enabled=rank0, config=cfg.to_dict())
    history = []

    saved_at, step_s, warned = None, 0.0, False
    source = getattr(algorithm, "sample_source", None)

    def save():
        nonlocal saved_at, warned
        if t.save_dir and saved_at != state.step:
            started = time.perf_counter()
            save_checkpoint(
                t.save_dir, state.step, model_chunks, optimizer,
                {"scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
                 "nonfinite_total": state.nonfinite_total,
                 "algorithm": algorithm.state_dict() if hasattr(algorithm, "state_dict") else None},
                keep_last=t.keep_last_checkpoints, extra_models=extra_models,
            )
            saved_at = state.step
            warning = None if warned else stop.over_grace(step_s, time.perf_counter() - started)
            if warning:
                _say(warning)
                warned = True

    with StopRequest() as stop:
        try:
            last = min(t.steps, t.exit_at_step or t.steps)
            # The pipeline's activation shape: an RL micro-batch holds group_size completions per
            # prompt; a packed micro-batch is one row.
            rows = getattr(algorithm, "microbatch_rows", t.micro_batch_size)
            while state.step < last:
                started = time.perf_counter()
                draw = {"draw": sampler.next_indices} if getattr(algorithm, "draws_prompts", False) else {}
                indices = sampler.next_indices()
                if source is not None and state.step + 1 < last:
                    # Read ahead only: the sampler's position moves when a batch is drawn, so a
                    # checkpoint never counts the prefetched batch (docs/DATA.md "Background loading").
                    source.prefetch(sampler.indices_at(sampler.consumed_samples))
                microbatches, metrics = algorithm.prepare(indices, state.step, **draw)
                updates = algorithm.mini_batches(microbatches) if hasattr(algorithm, "mini_batches") else [microbatches]
                per_update = []
                for part in updates:
                    per_update.append(optimizer_step(model_chunks, optimizer, scheduler, part, algorithm.forward_step,
                                                     t.seq_length, rows))
                    if per_update[-1]["nonfinite"]:
                        state.nonfinite_total += 1
                        state.nonfinite_in_a_row += 1
                    else:
                        state.nonfinite_in_a_row = 0
                metrics.update(combine_updates(per_update))
                state.step += 1
                metrics["nonfinite_total"] = float(state.nonfinite_total)
                metrics["step_time_s"] = step_s = time.perf_counter() - started
                history.append({"step": state.step, **metrics})
                if state.step % t.log_interval == 0:
                    logger.log(state.step, metrics)
                if t.save_interval and state.step % t.save_interval == 0:
                    save()
                if t.max_nonfinite_in_a_row and state.nonfinite_in_a_row >= t.max_nonfinite_in_a_row:
                    _say(f"[train] stopping: {state.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss "
                         "or gradient")
                    break
                if stop.agreed():
                    _say(f"[train] SIGTERM: checkpointing step {state.step} and stopping")
                    break
            save()
        finally:
            if source is not None:
                source.close()
            logger.close()
    return history


def _say(message: str) -> None:
    if dist.get_rank() == 0:
        print(message, flush=True)
