"""The training loop: resume, step, log, checkpoint. Algorithms supply batches and the forward.

An algorithm object has two methods:
  prepare(indices, step) -> (micro-batches, metrics): everything before the loss forward
      (collation; for RL: rollouts, rewards and the no-grad scoring forwards);
  forward_step(micro_batch, model) -> (output, loss_func): the megatron forward step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch.distributed as dist

from megatron_omni.config import Config
from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from megatron_omni.training.metrics import MetricsLogger
from megatron_omni.training.step import optimizer_step


class Algorithm(Protocol):
    def prepare(self, indices: list[int], step: int) -> tuple[list, dict]: ...

    def forward_step(self, micro_batch, model): ...


@dataclass
class TrainState:
    step: int = 0


def split_microbatches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def resume_if_possible(cfg: Config, model_chunks, optimizer, scheduler, sampler: ResumableBatchSampler) -> TrainState:
    """Load the newest complete checkpoint from ``train.load_dir`` (or ``train.save_dir``)."""
    folder = cfg.train.load_dir or cfg.train.save_dir
    ckpt = latest_checkpoint(folder) if folder else None
    if ckpt is None:
        return TrainState()
    run_state = load_checkpoint(ckpt, model_chunks, optimizer)
    scheduler.load_state_dict(run_state["scheduler"])
    sampler.load_state_dict(run_state["sampler"])
    if dist.get_rank() == 0:
        print(f"[train] resumed from {ckpt} at step {run_state['step']}", flush=True)
    return TrainState(step=run_state["step"])


def train(cfg: Config, model_chunks, optimizer, scheduler, sampler: ResumableBatchSampler, algorithm: Algorithm) -> list[dict]:
    """Run ``cfg.train.steps`` optimizer steps (continuing a resumed run); returns this run's metrics."""
    t = cfg.train
    state = resume_if_possible(cfg, model_chunks, optimizer, scheduler, sampler)
    rank0 = dist.get_rank() == 0
    logger = MetricsLogger(cfg.output_dir, cfg.logging, t.steps, state.step, enabled=rank0)
    history = []

    def save():
        save_checkpoint(
            t.save_dir, state.step, model_chunks, optimizer,
            {"scheduler": scheduler.state_dict(), "sampler": sampler.state_dict()},
        )

    try:
        last = min(t.steps, t.exit_at_step or t.steps)
        while state.step < last:
            started = time.perf_counter()
            microbatches, metrics = algorithm.prepare(sampler.next_indices(), state.step)
            metrics.update(optimizer_step(
                model_chunks, optimizer, scheduler, microbatches, algorithm.forward_step, t.seq_length, t.micro_batch_size
            ))
            state.step += 1
            metrics["step_time_s"] = time.perf_counter() - started
            history.append({"step": state.step, **metrics})
            if state.step % t.log_interval == 0:
                logger.log(state.step, metrics)
            if t.save_dir and t.save_interval and state.step % t.save_interval == 0:
                save()
        if t.save_dir and not (t.save_interval and state.step % t.save_interval == 0):
            save()
    finally:
        logger.close()
    return history
