"""Check a launch: every rank reports its place and one all-reduce proves the group works.

    torchrun --nproc-per-node 8 -m megatron_omni.cli.check_launch      (or under srun, see examples/slurm/)
"""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist

from megatron_omni.parallel.runtime import init_distributed


def main() -> None:
    env = init_distributed()
    ranks = torch.tensor([float(env.rank)])
    dist.all_reduce(ranks)
    expected = env.world_size * (env.world_size - 1) / 2
    print(f"rank={env.rank} world_size={env.world_size} local_rank={env.local_rank} "
          f"master={env.master_addr}:{env.master_port} host={socket.gethostname()} "
          f"backend={dist.get_backend()} all_reduce={'ok' if ranks.item() == expected else 'WRONG'}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
