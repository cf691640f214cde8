"""Atomic, resharding-friendly checkpoints through megatron-core ``dist_checkpointing``.

Layout of a save folder::

    save_dir/
      latest                  "iter_0000040" -- written last, atomically
      iter_0000040/           dist_checkpointing files (model, optimizer), common state
        run_state.pt          step, scheduler, sampler position, ... (rank 0)
        rng/rank00000.pt      each rank's RNG states (restored when the layout matches)
        COMPLETE              the manifest: every other file's size and CRC-32, written last

A save goes to ``tmp.iter_...`` and is renamed when every rank has finished, so a crash mid-write
leaves the previous checkpoint as the newest complete one. Model and optimizer tensors are stored
by their global shape, so a checkpoint saved at one TP/PP layout loads at another.

Integrity. The manifest is written after every rank's files and before the rename; a load first
checks every file against it (the ranks share the files out and agree on the result), then loads.
A checkpoint that fails either way is reported with its path and `load_latest` takes the next
older complete one; all ranks decide together, so they always load the same one. The checksum is
zlib's CRC-32, streamed: it runs at disk speed, releases the GIL and catches truncation and torn
or zeroed blocks, which is what crashes and full disks produce (nothing here defends against
deliberate tampering, which would need a cryptographic hash at several times the cost).

The checkpoint helper. megatron-core's ``filesystem_async`` writer hands its results back through
a queue served by a ``multiprocessing`` manager process that it starts at the first save and keeps
for the whole run. Left to megatron it sits in the trainer's process group, so the SIGTERM that
torchrun sends to each worker's group on shutdown (and SLURM to every process of a step) kills it,
and the save in progress dies with ``BrokenPipeError``. `start_writer_helper` starts that process
itself instead (before megatron would; the training loop does it at start, so that the first save
after a SIGTERM does not also wait for a fresh interpreter; what it runs first, in `writer_helper`,
imports only the standard library, so it is up in a fraction of a second): in a session of its
own, ignoring SIGTERM and SIGINT, and killed by the kernel when the trainer dies (``PR_SET_PDEATHSIG``), so
neither a preemption signal nor ``kill -9`` of the trainer leaves a broken save or an orphan behind
(multiprocessing's resource tracker exits by itself once the trainer and the helper are gone; a
helper still starting up when the trainer dies exits as soon as it has). Keeping the asynchronous
machinery working was preferred to a separate synchronous save path at preemption: one save path,
the same files, and preemption saves as fast as periodic ones.
"""
from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import shutil
import threading
import traceback
import zlib
from multiprocessing.managers import SyncManager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from torch.distributed.checkpoint import CheckpointException

from megatron_omni.training.model_setup import unwrap
from megatron_omni.training.writer_helper import shelter_helper

_ITER = re.compile(r"^iter_(\d{7})$")
COMPLETE = "COMPLETE"
_CHUNK = 8 << 20
# torch.distributed.checkpoint's CheckpointException (a rank's failure inside a collective save or
# load) derives from BaseException, not Exception.
_FAILURES = (Exception, CheckpointException)


class CheckpointError(RuntimeError):
    pass


def start_writer_helper() -> None:
    """Start the manager process behind megatron's write-results queue ourselves (module docstring)."""
    if not hasattr(filesystem_async, "_results_queue"):
        raise CheckpointError("megatron.core.dist_checkpointing.strategies.filesystem_async has no _results_queue: "
                              "this megatron-core version creates its checkpoint helper differently")
    if filesystem_async._results_queue is not None:
        return
    if threading.current_thread() is not threading.main_thread():
        # PR_SET_PDEATHSIG fires when the thread that started the helper ends, not the process.
        raise CheckpointError("the checkpoint helper must be started from the main thread")
    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=shelter_helper, initargs=(os.getpid(),))
    filesystem_async._results_queue = manager.Queue()  # the proxy keeps the manager (and its finalizer)


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


# The distributed optimizer's layout on disk. megatron-core's default for it
# ("fully_sharded_model_space") stores flattened ranges, which its own dist_checkpointing save
# refuses; "dp_reshardable" stores each rank's contiguous buffer shard as it is (no gather, no
# communication), and a checkpoint loads at the same TP/PP with any data-parallel size.
# Written as the checkpoint's content metadata, so a load reads the layout the save used.
OPTIMIZER_LAYOUT = {"distrib_optim_sharding_type": "dp_reshardable"}


def _distributed_optimizers(optimizer) -> list[DistributedOptimizer]:
    """The distributed optimizers inside a run's (possibly chained) megatron optimizer."""
    return [inner for inner in getattr(optimizer, "chained_optimizers", [optimizer])
            if isinstance(inner, DistributedOptimizer)]


def _allocate_optimizer_state(optimizer) -> None:
    """A distributed optimizer that has not stepped yet holds no Adam state (torch allocates it at
    the first step), and megatron builds its load target from that state: give it state first
    (megatron's zero-gradient step; what it writes is replaced by the load)."""
    for inner in _distributed_optimizers(optimizer):
        if not inner.optimizer.state:
            inner._init_optimizer_states_with_dummy_values()


def _restore_adam_steps(optimizer) -> None:
    """torch Adam keeps a ``step`` tensor per parameter. The distributed optimizer saves the step in
    its parameter groups and, at load, writes it into one tensor shared by every parameter, then
    copies the per-parameter state over it, ``step`` included, from the load target (which holds
    the steps from before the load: its layout does not save them). Each parameter gets its own
    tensor with the saved step; one shared tensor would also advance once per parameter in
    torch's foreach Adam."""
    for inner in _distributed_optimizers(optimizer):
        for group in inner.optimizer.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                state = inner.optimizer.state.get(param, {})
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = torch.tensor(float(group["step"]), dtype=state["step"].dtype,
                                                 device=state["step"].device)


def _sharded_state_dict(model_chunks, optimizer, is_loading: bool, extra_models: dict | None,
                        optimizer_layout: dict | None = None) -> dict:
    state = _model_sharded_state_dict(model_chunks)
    if optimizer is not None:
        if is_loading:
            _allocate_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading,
                                                          metadata=optimizer_layout or OPTIMIZER_LAYOUT)
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


def _checksum(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _share(items: list) -> list:
    """This rank's share of ``items`` (every rank takes every world-size-th one)."""
    return items[dist.get_rank()::dist.get_world_size()]


def _gathered(local: list) -> list:
    """Concatenation of every rank's ``local`` list, on every rank."""
    lists = [None] * dist.get_world_size()
    dist.all_gather_object(lists, local)
    return [item for part in lists for item in part]


def _write_manifest(folder: Path, step: int) -> None:
    """Collective: the ranks checksum a share of the files each; rank 0 writes the manifest."""
    names = [sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())] if dist.get_rank() == 0 else [None]
    dist.broadcast_object_list(names, src=0)
    entries = _gathered([(name, (folder / name).stat().st_size, _checksum(folder / name)) for name in _share(names[0])])
    if dist.get_rank() == 0:
        files = {name: {"size": size, "crc32": crc} for name, size, crc in sorted(entries)}
        (folder / COMPLETE).write_text(json.dumps({"step": step, "checksum": "crc32", "files": files}, indent=1))


def _verify(folder: Path) -> str | None:
    """Collective: what is wrong with ``folder``'s files against its manifest (None: nothing)."""
    try:
        text = (folder / COMPLETE).read_text()
        if text.strip().isdigit():  # the step number alone: saved before manifests existed
            if dist.get_rank() == 0:
                print(f"[checkpoint] {folder} has no manifest (an older save): loading it unverified", flush=True)
            return None
        files = json.loads(text)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{folder / COMPLETE}: unreadable manifest ({type(exc).__name__}: {exc})"
    problems = []
    for name, want in _share(sorted(files.items())):
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {want['size']}")
        elif _checksum(path) != want["crc32"]:
            problems.append(f"{path}: checksum mismatch")
    problems = _gathered(problems)
    return "; ".join(problems) if problems else None


def _bytes_to_save(state: dict, seen: set | None = None) -> int:
    """What a save writes, estimated from the state: every sharded tensor (those factories build
    included) once at its global shape, plus the other tensors this rank holds."""
    total, seen = 0, set() if seen is None else seen
    for value in nested_values(state):
        if isinstance(value, ShardedTensorFactory):
            total += _bytes_to_save(value.build(), seen)
        elif isinstance(value, ShardedTensor):
            if value.key not in seen:
                seen.add(value.key)
                total += math.prod(value.global_shape) * value.dtype.itemsize
        elif isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


def _causes(exc: BaseException):
    """``exc``, what it was raised from, and the rank failures a CheckpointException wraps."""
    while exc is not None:
        yield exc
        if isinstance(exc, CheckpointException):
            for failure, _ in exc.failures.values():
                yield from _causes(failure)
        exc = exc.__cause__ or exc.__context__


def _out_of_space(exc: BaseException) -> bool:
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e) for e in _causes(exc))


def _reason(exc: BaseException) -> str:
    """One line: the innermost failure (a CheckpointException's first rank failure, not its traceback)."""
    inner = [e for e in _causes(exc) if not isinstance(e, CheckpointException)] or [exc]
    failure = inner[-1]
    message = str(failure)
    if not message and failure.__traceback__ is not None:
        # A bare assert says nothing: name the line that raised it.
        frame = traceback.extract_tb(failure.__traceback__)[-1]
        message = f"at {frame.filename}:{frame.lineno} ({frame.line})"
    text = " ".join(f"{type(failure).__name__}: {message}".split())
    return text if len(text) <= 300 else text[:297] + "..."


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
    start_writer_helper()
    state = _sharded_state_dict(model_chunks, optimizer, False, extra_models)
    needed = _bytes_to_save(state)
    try:
        dist_checkpointing.save(state, str(tmp), content_metadata=OPTIMIZER_LAYOUT)
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save({"layout": _layout(), **_rng_state()}, tmp / "rng" / f"rank{rank:05d}.pt")
        if rank == 0:
            torch.save({"step": step, "layout": _layout(), **run_state}, tmp / "run_state.pt")
        dist.barrier()
        _write_manifest(tmp, step)
    except _FAILURES as exc:
        # torch.save's writer reports a full disk without errno ("unexpected pos 704 vs 598"): a
        # device with less room left than the checkpoint needs counts as full too.
        full = _out_of_space(exc) or shutil.disk_usage(save_dir).free < needed
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save must not keep its space
        if full:
            raise CheckpointError(
                f"no space left on the device of {save_dir} saving step {step}: the checkpoint needs about "
                f"{needed:,} bytes, {shutil.disk_usage(save_dir).free:,} are free there") from exc
        raise
    if rank == 0:
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
    """Complete checkpoint folders (with a manifest), oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = [p for p in save_dir.iterdir() if _ITER.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: p.name)


def _candidates(save_dir: Path) -> list[Path]:
    """Complete checkpoints in the order they are tried: the one ``latest`` names, then newest first."""
    newest_first = complete_checkpoints(save_dir)[::-1]
    pointer = save_dir / "latest"
    if pointer.is_file():
        named = save_dir / pointer.read_text().strip()
        if named in newest_first:
            return [named] + [p for p in newest_first if p != named]
        print(f"[checkpoint] {named} named by {pointer} is incomplete; looking for an older one", flush=True)
    return newest_first


def latest_checkpoint(save_dir) -> Path | None:
    """The folder named by ``latest`` if it is complete, else the newest complete one."""
    found = _candidates(Path(save_dir))
    return found[0] if found else None


def remove_stale_tmp(save_dir) -> None:
    """Collective: delete the unfinished saves (``tmp.*``) an earlier run left in ``save_dir``."""
    save_dir = Path(save_dir)
    if dist.get_rank() == 0 and save_dir.is_dir():
        for stale in sorted(save_dir.glob("tmp.*")) + sorted(save_dir.glob("latest.tmp")):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            print(f"[checkpoint] removed {stale}, an unfinished save of an earlier run", flush=True)
    dist.barrier()


def _load_checkpoint(ckpt_dir: Path, model_chunks, optimizer, extra_models: dict | None) -> dict:
    try:
        # Checkpoints written before the layout was recorded hold no distributed-optimizer state.
        layout = dist_checkpointing.load_content_metadata(str(ckpt_dir)) or OPTIMIZER_LAYOUT
        state = dist_checkpointing.load(_sharded_state_dict(model_chunks, optimizer, True, extra_models, layout),
                                        str(ckpt_dir))
    except _FAILURES as exc:
        raise CheckpointError(f"{ckpt_dir}: dist_checkpointing load failed ({_reason(exc)})") from exc
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
        # With fp32 weights the distributed optimizer's main parameters are views of the model's
        # (leaves that require grad), which its in-place copies may only write outside autograd.
        with torch.no_grad():
            optimizer.load_state_dict(state["optimizer"])
        _restore_adam_steps(optimizer)
    run_state = _torch_load(ckpt_dir / "run_state.pt")
    rng_file = ckpt_dir / "rng" / f"rank{dist.get_rank():05d}.pt"
    if rng_file.is_file():
        rng = _torch_load(rng_file)
        if rng.pop("layout") == _layout():
            _set_rng_state(rng)
    return run_state


def _torch_load(path: Path):
    try:
        return torch.load(path, weights_only=False)
    except Exception as exc:  # EOFError, UnpicklingError, PytorchStreamReader's RuntimeError, OSError 22 ...
        raise CheckpointError(f"{path}: {_reason(exc)}") from exc


def load_checkpoint(ckpt_dir, model_chunks, optimizer, extra_models: dict | None = None) -> dict:
    """Collective: verify ``ckpt_dir`` against its manifest, load model (and optimizer) in place;
    returns the rank-0 run state. Raises `CheckpointError` naming the file on every rank when any
    rank finds a problem.

    RNG states are restored only when the parallel layout equals the saved one (per-rank streams
    have no meaning across layouts).
    """
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / COMPLETE).is_file():
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint (no {COMPLETE} manifest)")
    problem = _verify(ckpt_dir)
    if problem:
        raise CheckpointError(problem)
    try:
        run_state, failure = _load_checkpoint(ckpt_dir, model_chunks, optimizer, extra_models), []
    except CheckpointError as exc:
        run_state, failure = None, [str(exc)]
    failures = _gathered(failure)
    if failures:
        raise CheckpointError("; ".join(failures))
    return run_state


def load_latest(save_dir, model_chunks, optimizer, extra_models: dict | None = None) -> tuple[Path, dict] | None:
    """Collective: load the newest usable checkpoint of ``save_dir``: (its folder, the run state),
    or None when there is none. One that fails verification or loading is reported in one line and
    the next older complete one is tried; all ranks try the same ones (rank 0's listing)."""
    candidates = [_candidates(Path(save_dir)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(candidates, src=0)
    failures = []
    for i, ckpt in enumerate(candidates[0]):
        try:
            return ckpt, load_checkpoint(ckpt, model_chunks, optimizer, extra_models)
        except CheckpointError as exc:
            failures.append(str(exc))
            older = candidates[0][i + 1] if i + 1 < len(candidates[0]) else None
            if dist.get_rank() == 0:
                then = f"loading the next older complete one, {older}" if older else "no older complete one is left"
                print(f"[checkpoint] unusable checkpoint {ckpt}: {exc}; {then}", flush=True)
    if failures:
        raise CheckpointError(f"no usable checkpoint in {save_dir}: " + " | ".join(failures))
    return None
