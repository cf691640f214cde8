"""Build the model chunks of this rank's pipeline stage(s) and wrap them for training."""
from __future__ import annotations

import math
from typing import Callable

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.transformer.module import Float16Module, MegatronModule

from megatron_omni.parallel.param_init import layout_independent_init
from megatron_omni.training.config import RunConfig

# (cfg, pre_process, post_process, vp_stage) -> one model chunk
ChunkBuilder = Callable[[RunConfig, bool, bool, "int | None"], MegatronModule]


def build_model_chunks(cfg: RunConfig, builder: ChunkBuilder, wrap_ddp: bool = True) -> list[MegatronModule]:
    """One chunk per virtual pipeline stage held by this rank (one chunk without interleaving).

    Weights are drawn per parameter name, so every TP/PP layout starts from the same model.
    Chunks are wrapped in ``Float16Module`` for bf16/fp16 parameters and in megatron's
    ``DistributedDataParallel`` (contiguous grad buffers, fp32 main grads) for training.
    """
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    stages = range(vpp) if vpp else [None]
    chunks = []
    for vp_stage in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        chunk = builder(cfg, pre, post, vp_stage)
        tconfig = chunk.config
        layout_independent_init(
            chunk, cfg.train.seed, tconfig.init_method_std, tconfig.init_method_std / math.sqrt(2 * tconfig.num_layers)
        )
        chunks.append(chunk)
    if torch.cuda.is_available():
        for chunk in chunks:
            chunk.cuda(torch.cuda.current_device())
    tconfig = chunks[0].config
    if tconfig.bf16 or tconfig.fp16:
        chunks = [Float16Module(tconfig, chunk) for chunk in chunks]
    if not wrap_ddp:
        return chunks
    # The schedules call this after the last backward: data-parallel grad all-reduce, the
    # tied-embedding grad sum between first and last pipeline stage, sequence-parallel norms.
    tconfig.finalize_model_grads_func = finalize_model_grads
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    return [
        DistributedDataParallel(
            config=tconfig,
            ddp_config=ddp_config,
            module=chunk,
            # As in megatron-LM: only the first chunk buckets its grads for overlapped reduction.
            disable_bucketing=(i > 0),
        )
        for i, chunk in enumerate(chunks)
    ]


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP / Float16Module wrappers."""
    while isinstance(chunk, (DistributedDataParallel, Float16Module)):
        chunk = chunk.module
    return chunk

