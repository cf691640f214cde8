"""How a megatron parameter shard relates to the full, single-process tensor.

Used to initialise weights identically under any TP/PP layout and to gather full tensors back
(tests, diagnostics). Megatron marks TP-sharded parameters with ``tensor_model_parallel`` and
``partition_dim``; the SwiGLU ``linear_fc1`` is the one layout that is not a plain split: each rank
holds ``[gate_r; up_r]`` while the full matrix is ``[gate; up]``.

MoE experts (megatron's ``mlp.experts.local_experts.<j>``, marked ``allreduce=False``) are split
over the expert-parallel group: rank r holds experts ``r * local .. (r + 1) * local - 1``, named
here by their global index; each expert is TP-sharded over the expert tensor-parallel group.
"""
from __future__ import annotations

import zlib

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def global_param_name(model: torch.nn.Module, name: str) -> str:
    """Replace a pipeline stage's local layer index by the global one (``layer_number - 1``) and an
    expert-parallel rank's local expert index by the global one."""
    parts = name.split(".")
    if "local_experts" in parts:
        i = parts.index("local_experts")
        local = len(model.get_submodule(".".join(parts[: i + 1])))
        parts[i + 1] = str(parallel_state.get_expert_model_parallel_rank() * local + int(parts[i + 1]))
    if "layers" in parts:
        i = parts.index("layers")
        layer = model.get_submodule(".".join(parts[: i + 2]))
        if hasattr(layer, "layer_number"):
            parts[i + 1] = str(layer.layer_number - 1)
    return ".".join(parts)


def _is_expert(param) -> bool:
    return not getattr(param, "allreduce", True)


def _tp_group_size_rank(param) -> tuple[int, int]:
    if _is_expert(param):
        return (parallel_state.get_expert_tensor_parallel_world_size(), parallel_state.get_expert_tensor_parallel_rank())
    return parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()


def _is_glu_fc1(name: str, param) -> bool:
    return name.endswith("linear_fc1.weight") and getattr(param, "tensor_model_parallel", False)


def full_shape(param, name: str) -> torch.Size:
    if not getattr(param, "tensor_model_parallel", False):
        return param.shape
    shape = list(param.shape)
    shape[param.partition_dim] *= _tp_group_size_rank(param)[0]
    return torch.Size(shape)


def local_shard(full: torch.Tensor, param, name: str) -> torch.Tensor:
    """This TP rank's slice of ``full``."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp, rank = _tp_group_size_rank(param)
    if _is_glu_fc1(name, param):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
    return full.chunk(tp, dim=param.partition_dim)[rank]


def gather_full(local: torch.Tensor, param, name: str) -> torch.Tensor:
    """Inverse of ``local_shard`` (collective over the TP group)."""
    if not getattr(param, "tensor_model_parallel", False):
        return local
    group = (parallel_state.get_expert_tensor_parallel_group() if _is_expert(param)
             else parallel_state.get_tensor_model_parallel_group())
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    if _is_glu_fc1(name, param):
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(parts, dim=param.partition_dim)


@torch.no_grad()
def layout_independent_init(model: torch.nn.Module, seed: int, std: float, output_std: float) -> None:
    """Re-draw every matrix from a generator keyed by its global name, then keep this rank's shard.

    megatron's CPU initialisation draws in construction order, so a pipeline stage that starts at
    layer 2 gets other weights than the single-process model. Keying each draw by the parameter's
    global name makes the starting point identical under every TP/PP/VPP layout. Vectors (norm
    weights, biases) are already layout-independent and stay as built.
    """
    tied = getattr(model, "share_embeddings_and_output_weights", False)
    for name, param in model.named_parameters():
        if param.dim() < 2:
            continue
        key = global_param_name(model, name)
        if tied and key.endswith("output_layer.weight"):
            # The last stage's copy of the embedding (``language_model.`` prefix in the omni model).
            key = key[: -len("output_layer.weight")] + "embedding.word_embeddings.weight"
        scale = output_std if key.endswith(("linear_proj.weight", "linear_fc2.weight")) else std
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        full = torch.randn(full_shape(param, name), generator=gen, dtype=torch.float32) * scale
        param.copy_(local_shard(full, param, name))
