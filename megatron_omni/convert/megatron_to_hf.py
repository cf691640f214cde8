"""Megatron checkpoint (model-only or a training run's, saved at any TP/PP) -> Hugging Face folder.

Without a base model the folder is a thinker (``Qwen2_5OmniThinkerForConditionalGeneration`` or
``Qwen3OmniMoeThinkerForConditionalGeneration``, as the checkpoint's ``model.family`` says). With
``base_model`` (a full released folder of the same family) it is the full model: the thinker from
the checkpoint under ``thinker.``, every other tensor (talker, token2wav / code2wav), spk_dict.pt, config.json
and the tokenizer/processor files from the base model, unchanged. Tensors are read a layer at a
time and written to shards as they fill, so memory stays at a layer plus a shard.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from megatron.core.dist_checkpointing.core import CheckpointingException
from torch.distributed.checkpoint.api import CheckpointException

from megatron_omni.config import ConfigError
from megatron_omni.convert.dist_streaming import (
    check_names,
    iter_checkpoint_groups,
    layer_groups,
    meta_sharded_state_dict,
    tensor_entries,
)
from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.hf_checkpoint import INDEX_FILE, HFCheckpoint, ShardWriter, parse_size
from megatron_omni.convert.hf_config import TORCH_DTYPES, thinker_config_dict, to_hf_thinker_config
from megatron_omni.convert.mapping import OmniParamMap
from megatron_omni.convert.megatron_checkpoint import (
    ASSETS_DIR,
    atomic_output_dir,
    check_output_dir,
    checkpoint_iteration_dir,
    copy_assets,
)
from megatron_omni.convert.model_config_file import model_config_path, read_model_config
from megatron_omni.convert.world import single_process_world
from megatron_omni.models.decoder import padded_vocab_size

Log = Callable[[str], None]


def check_base_model(base: HFCheckpoint, param_map: OmniParamMap, config_file: Path) -> None:
    """The base model must be of the checkpoint's family and have its thinker's tensors, shape for shape."""
    family, _ = thinker_config_dict(base.folder)  # a folder of a known family, with a clear error otherwise
    if family.name != param_map.family:
        raise ConversionError(f"the base model {base.folder} is a {family.full_type} model, but the checkpoint {config_file} "
                              f"holds a {param_map.family} thinker (model.family)")
    ours, theirs = param_map.hf_shapes(), base.shapes()
    for key in [*ours, *sorted(set(theirs) - set(ours))]:
        if ours.get(key) != theirs.get(key):
            found = list(theirs[key]) if key in theirs else "absent"
            expected = list(ours[key]) if key in ours else "absent"
            raise ConversionError(
                f"the thinker {config_file} describes does not fit the base model {base.folder}: first mismatching "
                f"tensor {base.prefix}{key}: checkpoint {expected}, base model {found}"
            )


def copy_base_files(base_dir: Path, out_dir: Path) -> list[str]:
    """Every file of the base model but its weights: config.json, spk_dict.pt, tokenizer, processor..."""
    copied = []
    for path in sorted(base_dir.iterdir()):
        if path.is_file() and path.suffix != ".safetensors" and path.name != INDEX_FILE:
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied


def convert_megatron_to_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    base_model: str | Path | None = None,
    iteration: int | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    log: Log = print,
) -> Path:
    """Write ``out_dir``: safetensors shards (+ index), config.json and the tokenizer/processor files.

    ``checkpoint`` is a folder written by save_model_checkpoint, a training run's ``train.save_dir``
    (``iteration``: which of its complete checkpoints, default the latest) or an ``iter_*`` folder;
    the omni_model.yaml beside it describes the model. Tied embeddings produce no lm_head key.
    """
    out_dir = check_output_dir(out_dir, overwrite)
    try:
        cfg = read_model_config(checkpoint)
        config_file = model_config_path(checkpoint)
    except (ConfigError, FileNotFoundError) as exc:
        raise ConversionError(str(exc)) from None
    folder = checkpoint_iteration_dir(checkpoint, iteration)
    param_map = OmniParamMap(cfg, padded_vocab_size(cfg.model, 1))
    base = HFCheckpoint(base_model) if base_model is not None else None
    if base is not None:
        check_base_model(base, param_map, config_file)
    by_name = {mapping.megatron: mapping for mapping in param_map.mappings}
    # megatron keeps norm weights in fp32 whatever params_dtype says; a HF folder stores the
    # base model's dtype per tensor, else the checkpoint's params_dtype.
    dtype = TORCH_DTYPES[cfg.params_dtype]
    dtypes = {key: info.dtype for key, info in base.tensors.items()} if base is not None else {}
    prefix = base.prefix if base is not None else ""
    with single_process_world(), atomic_output_dir(out_dir, overwrite) as tmp:
        entries = tensor_entries(meta_sharded_state_dict(cfg))
        check_names(entries, set(by_name))
        writer = ShardWriter(tmp, parse_size(max_shard_size), log)
        log(f"[convert] reading {folder} a layer at a time")
        groups = iter_checkpoint_groups(folder, entries, layer_groups(by_name))
        while True:
            try:
                group = next(groups, None)
            except (CheckpointException, CheckpointingException, KeyError, RuntimeError) as exc:
                # torch's CheckpointException carries every rank's traceback; its last line is the cause.
                cause = str(exc).strip().splitlines()[-1]
                raise ConversionError(f"{folder} does not hold the model {config_file} describes: {cause}") from None
            if group is None:
                break
            for name, tensor in group.items():
                mapping = by_name[name]
                for key, part in zip(mapping.hf, param_map.to_hf(mapping, tensor)):
                    writer.add(prefix + key, part.to(dtypes.get(key, dtype)))
        if base is not None:
            for key, info in base.speech.items():
                writer.add(key, base.read(info))
        writer.close()
        if base is not None:
            copied = copy_base_files(base.folder, tmp)
            log(f"[convert] wrote the full model {out_dir}: thinker from {folder}, "
                f"{len(base.speech)} speech-generation tensors and {', '.join(copied)} from {base.folder}")
        else:
            to_hf_thinker_config(cfg).save_pretrained(tmp)
            copied = copy_assets(config_file.parent / ASSETS_DIR, tmp)
            log(f"[convert] wrote {out_dir}" + (f" with {', '.join(copied)}" if copied else ""))
    return out_dir
