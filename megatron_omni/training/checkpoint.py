"""Atomic, resharding-friendly checkpoints through megatron-core ``dist_checkpointing``.

Layout of a save folder::

    save_dir/
      latest                  "iter_0000040" -- written last, atomically
      iter_0000040/           dist_checkpointing files (model, optimizer), common state
        run_state.pt          step, scheduler, sampler position, ... (rank 0)
        rng/rank00000.pt      each rank's RNG states (restored when the layout matches)
        COMPLETE              marker: the folder is whole

A save goes to ``tmp.iter_...`` and is renamed when every rank has finished, so a crash mid-write
leaves the previous checkpoint as the newest complete one. Model and optimizer tensors are stored
by their global shape, so a checkpoint saved at one TP/PP layout loads at another.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from megatron_omni.training.model_setup import unwrap

_ITER = re.compile(r"^iter_(\d{7})$")
COMPLETE = "COMPLETE"


class CheckpointError(RuntimeError):
    pass


def _layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "world": dist.get_world_size(),
    }


def _model_sharded_state_dict(model_chunks) -> dict:
    if len(model_chunks) == 1:
        return {"model": unwrap(model_chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(model_chunks)}


def _sharded_state_dict(model_chunks, optimizer, is_loading: bool, extra_models: dict | None) -> dict:
    state = _model_sharded_state_dict(model_chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading)
    for name, chunks in (extra_models or {}).items():
        # Other models a run trains besides the policy (an EMA teacher): their own key prefix.
        for i, chunk in enumerate(chunks):
            state[f"{name}{i}"] = unwrap(chunk).sharded_state_dict(prefix=f"{name}{i}.")
    return state


def _rng_state() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def iteration_dir(save_dir: str | Path, step: int) -> Path:
    return Path(save_dir) / f"iter_{step:07d}"


def save_checkpoint(save_dir, step: int, model_chunks, optimizer, run_state: dict, keep_last: int | None = None,
                    extra_models: dict | None = None) -> Path:
    """Collective: every rank calls it. ``run_state`` is picklable rank-0 state (scheduler, sampler...);
    ``extra_models`` maps a name to further model chunks saved beside the policy."""
    save_dir = Path(save_dir)
    final = iteration_dir(save_dir, step)
    tmp = save_dir / f"tmp.{final.name}"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(_sharded_state_dict(model_chunks, optimizer, False, extra_models), str(tmp))
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save({"layout": _layout(), **_rng_state()}, tmp / "rng" / f"rank{rank:05d}.pt")
    if rank == 0:
        torch.save({"step": step, "layout": _layout(), **run_state}, tmp / "run_state.pt")
    dist.barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = save_dir / "latest.tmp"
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, save_dir / "latest")
        if keep_last:
            for old in complete_checkpoints(save_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def complete_checkpoints(save_dir) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = [p for p in save_dir.iterdir() if _ITER.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(save_dir) -> Path | None:
    """The folder named by ``latest`` if it is complete, else the newest complete one."""
    save_dir = Path(save_dir)
    pointer = save_dir / "latest"
    if pointer.is_file():
        named = save_dir / pointer.read_text().strip()
        if (named / COMPLETE).is_file():
            return named
        print(f"[checkpoint] {named} named by {pointer} is incomplete; looking for an older one", flush=True)
    complete = complete_checkpoints(save_dir)
    return complete[-1] if complete else None


def load_checkpoint(ckpt_dir, model_chunks, optimizer, extra_models: dict | None = None) -> dict:
    """Collective: load model (and optimizer) in place; returns the rank-0 run state.

    RNG states are restored only when the parallel layout equals the saved one (per-rank streams
    have no meaning across layouts).
    """
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / COMPLETE).is_file():
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint (no {COMPLETE} marker)")
    state = dist_checkpointing.load(_sharded_state_dict(model_chunks, optimizer, True, extra_models), str(ckpt_dir))
    if len(model_chunks) == 1:
        unwrap(model_chunks[0]).load_state_dict(state["model"])
    else:
        for i, chunk in enumerate(model_chunks):
            unwrap(chunk).load_state_dict(state[f"model{i}"])
    for name, chunks in (extra_models or {}).items():
        for i, chunk in enumerate(chunks):
            prefix = f"{name}{i}."
            unwrap(chunk).load_state_dict({k[len(prefix):]: v for k, v in state[f"{name}{i}"].items()})
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    run_state = torch.load(ckpt_dir / "run_state.pt", weights_only=False)
    rng_file = ckpt_dir / "rng" / f"rank{dist.get_rank():05d}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        if rng.pop("layout") == _layout():
            _set_rng_state(rng)
    return run_state
