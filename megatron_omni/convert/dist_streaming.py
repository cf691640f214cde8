"""Megatron dist_checkpointing folders read and written a layer (or a tensor) at a time.

The model is built on the meta device (shapes, no storage), so its sharded state dict gives every
tensor's checkpoint key, global shape and layer offset without allocating a weight:

- reading loads one group (a decoder / tower layer, or a single top-level tensor) per
  ``dist_checkpointing.load`` call, into fresh CPU tensors of that group only;
- writing saves through torch's single-file writer with a planner that produces each chunk on
  demand from a callback, so only the tensor being written is resident.

Either way the checkpoint is the one megatron's own save writes (torch_dist format, global shapes,
stacked decoder layers), so it loads at any TP/PP and checkpoints saved at any TP/PP read here.
"""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.model_config_file import OmniModelConfig
from megatron_omni.models.omni import build_omni_model

# The layer a state-dict name belongs to: decoder layers, vision blocks, audio layers.
_LAYER = re.compile(r"^(.*?\.(?:layers|blocks)\.\d+)\.")

Entry = ShardedTensor | ShardedTensorFactory


def meta_sharded_state_dict(cfg: OmniModelConfig) -> dict:
    """The sharded state dict of the model built weightless at TP = PP = 1 (needs megatron's
    parallel groups: single_process_world)."""
    with torch.device("meta"):
        model = build_omni_model(cfg.to_config(), omni=cfg.omni, initialize=False)
    return model.sharded_state_dict()


def tensor_entries(sharded: dict) -> dict[str, Entry]:
    """State-dict name -> sharded tensor entry; the ``_extra_state`` objects are left out (the
    local layers store nothing in them)."""
    return {name: entry for name, entry in _flat(sharded).items() if not isinstance(entry, ShardedObject)}


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def layer_groups(names) -> dict[str, list[str]]:
    """Names grouped by the layer they belong to (a name outside any layer is its own group)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        match = _LAYER.match(name)
        groups[match.group(1) if match else name].append(name)
    return dict(groups)


def _tree_map(fn, tree):
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return fn(tree)


def _unstacked(entry):
    """A stacked-layer tensor (``prepend_axis_num``) as a plain [1, ...] chunk of the stacked key.

    torch_dist maps the stacked form to one torch ShardedTensor holding every layer of the key, so
    it cannot load one layer; the plain form is a chunk at the layer's offset and loads alone. The
    data stays a view of the original tensor.
    """
    if not isinstance(entry, ShardedTensor) or not entry.prepend_axis_num:
        return entry
    shape = (1,) * entry.prepend_axis_num + tuple(entry.local_shape)
    return dataclasses.replace(entry, data=entry.data.view(shape), local_shape=shape, prepend_axis_num=0)


def _request(entry: Entry) -> Entry:
    """A copy of a meta entry to load one layer into: empty CPU data, plain-chunk form."""
    data = torch.empty(entry.data.shape, dtype=entry.data.dtype)
    if isinstance(entry, ShardedTensor):
        return _unstacked(dataclasses.replace(entry, data=data))
    build, merge = entry.build_fn, entry.merge_fn
    # A factory (SwiGLU's gate/up halves) builds stacked tensors: build them plain, and give the
    # merge back the layer's own shapes.
    return ShardedTensorFactory(
        entry.key, data,
        lambda *args: _tree_map(_unstacked, build(*args)),
        lambda loaded: merge(_tree_map(lambda t: t.reshape(t.shape[t.dim() - data.dim():]), loaded)),
        entry.replica_id, entry.flattened_range,
    )


def iter_checkpoint_groups(iteration: Path, entries: dict[str, Entry],
                           groups: dict[str, list[str]]) -> Iterator[dict[str, torch.Tensor]]:
    """{state-dict name: tensor} of one group at a time, loaded from ``iteration``."""
    for names in groups.values():
        request = {name: _request(entries[name]) for name in names}
        # Keys of the checkpoint outside this group are not read; the access check (every part of
        # every key read exactly once) holds for whole-model loads only.
        loaded = dist_checkpointing.load(request, str(iteration), validate_access_integrity=False)
        yield {name: loaded[name].reshape(entries[name].data.shape) for name in names}


class _OnDemandPlanner(MCoreSavePlanner):
    """Resolves every tensor chunk through ``chunk(fqn, offsets, sizes)`` when it is written."""

    def __init__(self, chunk: Callable[[str, tuple[int, ...], tuple[int, ...]], torch.Tensor]):
        super().__init__(flatten_state_dict=False)
        self.chunk = chunk

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        sizes = tuple(write_item.tensor_data.chunk.sizes)
        return self.chunk(write_item.index.fqn, tuple(write_item.index.offset), sizes).reshape(sizes)


class _OnDemandSaveStrategy(SaveShardedStrategy):
    """megatron's torch_dist format, written one chunk at a time by one process."""

    def __init__(self, chunk):
        super().__init__("torch_dist", 1)
        self.chunk = chunk

    def save(self, sharded_state_dict, checkpoint_dir: Path) -> None:
        flat, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict)
        writer = FileSystemWriter(checkpoint_dir, single_file_per_rank=True, thread_count=1, sync_files=False)
        dcp_save(mcore_to_pyt_state_dict(flat, False), storage_writer=writer, planner=_OnDemandPlanner(self.chunk))

    def can_handle_sharded_objects(self) -> bool:
        return True


def _stored_tensor(entry: Entry) -> ShardedTensor:
    """The entry as stored: itself, or the first tensor its factory builds (SwiGLU's gate half,
    whose prepended-axis offsets are those of the up half too)."""
    if isinstance(entry, ShardedTensor):
        return entry
    built = entry.build()
    return next(iter(built.values() if isinstance(built, dict) else built))


def check_names(entries: dict[str, Entry], mapped: set[str]) -> None:
    """The mapping must cover the built model's tensors exactly."""
    if set(entries) != mapped:
        raise ConversionError(
            f"the mapping does not cover the built model: unmapped {sorted(set(entries) - mapped)}, "
            f"unknown {sorted(mapped - set(entries))}"
        )


def save_streamed(folder: Path, cfg: OmniModelConfig, tensor: Callable[[str], torch.Tensor], mapped: set[str]) -> None:
    """Write the dist_checkpointing files of the model into ``folder``. ``tensor(name)`` gives the
    full (TP = 1) tensor of a state-dict name in ``mapped`` and is called once per stored chunk; it
    is cast to the dtype the model keeps that tensor in."""
    sharded = meta_sharded_state_dict(cfg)
    entries = tensor_entries(sharded)
    check_names(entries, mapped)
    # A stored chunk is found by its checkpoint key plus its offsets along the prepended axes:
    # the layer for stacked decoder layers, then the global expert for MoE experts, which share
    # one key per layer.
    owner: dict[tuple[str, tuple[int, ...]], str] = {}
    leading_axes: dict[str, int] = {}
    for name, entry in entries.items():
        stored = _stored_tensor(entry)
        leading = tuple(stored.global_offset[: stored.prepend_axis_num])
        owner[(entry.key, leading)] = name
        leading_axes[entry.key] = len(leading)

    def chunk(fqn: str, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        n = leading_axes[fqn]
        name, offsets, sizes = owner[(fqn, offsets[:n])], offsets[n:], sizes[n:]
        full = tensor(name).to(entries[name].data.dtype)
        return full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))].contiguous()

    dist_checkpointing.save(sharded, str(folder), sharded_strategy=_OnDemandSaveStrategy(chunk))
