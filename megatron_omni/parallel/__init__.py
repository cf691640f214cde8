"""Process groups, megatron parallel state, seeds, and the CPU compatibility layer."""
from megatron_omni.parallel.cpu_compat import apply_cpu_compat, cpu_compat_active
from megatron_omni.parallel.device import resolve_device, step_device
from megatron_omni.parallel.runtime import (
    DistEnv,
    destroy_parallel,
    expert_group_max,
    init_distributed,
    initialize_parallel,
    read_dist_env,
    set_seed,
)

__all__ = [
    "DistEnv",
    "apply_cpu_compat",
    "cpu_compat_active",
    "destroy_parallel",
    "expert_group_max",
    "init_distributed",
    "initialize_parallel",
    "read_dist_env",
    "resolve_device",
    "set_seed",
    "step_device",
]
