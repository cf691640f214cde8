"""Process-group and megatron ``parallel_state`` set-up for torchrun, SLURM and single-process runs."""
from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_omni.parallel.cpu_compat import apply_cpu_compat


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def read_dist_env(environ: dict | None = None) -> DistEnv:
    """Rank layout from torchrun's variables, else SLURM's (one task per process), else one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
    else:
        rank, world, local_rank = 0, 1, 0
    addr = env.get("MASTER_ADDR") or _first_slurm_host(env) or "127.0.0.1"
    port = int(env.get("MASTER_PORT", 29500))
    return DistEnv(rank, world, local_rank, addr, port)


def _first_slurm_host(env) -> str | None:
    """First host of a SLURM node list such as ``gpu[012-015],gpu020`` -> ``gpu012``."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    first = nodelist.split(",")[0]
    if "[" not in first:
        return first
    prefix, ranges = first.split("[", 1)
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def init_distributed(timeout_minutes: int = 30) -> DistEnv:
    """Start torch.distributed (NCCL on GPU, gloo on CPU); applies the CPU compatibility layer."""
    denv = read_dist_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(denv.local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        apply_cpu_compat()
        backend = "gloo"
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", denv.master_addr)
        os.environ.setdefault("MASTER_PORT", str(denv.master_port))
        dist.init_process_group(
            backend=backend,
            rank=denv.rank,
            world_size=denv.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return denv


def initialize_parallel(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: int | None = None,
    expert_model_parallel_size: int = 1,
) -> None:
    """(Re-)create megatron's TP/PP/DP groups (and EP groups: experts split over
    ``expert_model_parallel_size`` ranks of each stage, expert TP = TP); data parallel takes what is
    left of the world."""
    from megatron.core import parallel_state

    world = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size
    if world % model_parallel:
        raise ValueError(
            f"world size {world} is not divisible by tensor_model_parallel_size "
            f"({tensor_model_parallel_size}) x pipeline_model_parallel_size ({pipeline_model_parallel_size})"
        )
    if world % (model_parallel * expert_model_parallel_size):
        raise ValueError(
            f"world size {world} is not divisible by tensor_model_parallel_size ({tensor_model_parallel_size}) x "
            f"pipeline_model_parallel_size ({pipeline_model_parallel_size}) x expert_model_parallel_size "
            f"({expert_model_parallel_size})"
        )
    destroy_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
    )


def expert_group_max(value: int) -> int:
    """The largest ``value`` over this rank's expert-parallel group (``value`` itself without expert
    parallelism). Its ranks are data-parallel replicas whose MoE forwards exchange tokens, so they
    agree this way on how many forwards to run."""
    from megatron.core import parallel_state

    from megatron_omni.parallel.device import step_device

    if parallel_state.get_expert_model_parallel_world_size() == 1:
        return value
    largest = torch.tensor([value], dtype=torch.long, device=step_device())
    dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=parallel_state.get_expert_model_parallel_group())
    return int(largest)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch identically on all ranks, plus megatron's per-TP-rank streams."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # On CPU the tracker class is the patched CPU one, so a forced reset keeps it.
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_parallel() -> None:
    """Drop megatron's groups and destroy their process groups.

    megatron's ``destroy_model_parallel`` only forgets its groups; torch.distributed keeps each one,
    and under gloo each keeps a network thread that wakes every few milliseconds. A process that
    re-creates its groups (tests, conversions, evaluation after training) would otherwise pile up
    hundreds of such threads."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return
    groups = _megatron_groups(parallel_state)
    parallel_state.destroy_model_parallel()
    live = dist.distributed_c10d._world.pg_map  # a group this rank is not in was never registered
    for group in groups:
        if group is not dist.GroupMember.WORLD and group in live:
            dist.destroy_process_group(group)


def _megatron_groups(parallel_state) -> list[dist.ProcessGroup]:
    """Every process group held in ``parallel_state``'s module globals (alone or in lists/dicts)."""
    found: dict[int, dist.ProcessGroup] = {}

    def visit(value) -> None:
        if isinstance(value, dist.ProcessGroup):
            found[id(value)] = value
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    for name, value in vars(parallel_state).items():
        if name.startswith("_") and name.lstrip("_").isupper():
            visit(value)
    return list(found.values())
