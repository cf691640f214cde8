"""Model-only Megatron checkpoints: the training checkpoint format without optimizer state.

Layout::

    out_dir/
      latest, iter_0000000/     megatron_omni.training.checkpoint format (dist_checkpointing,
                                global shapes: loads at any TP/PP), no optimizer, no RNG states
      omni_model.yaml           the model description (read_model_config)
      hf_assets/                tokenizer, processor and generation files of the source model

The whole folder is written under a hidden temporary name and renamed when complete, so a failed
save never leaves a partial ``out_dir`` behind. A training run's ``train.save_dir`` carries the
same two description files beside its ``iter_*`` folders (`describe_run_checkpoints`), so the
exporter reads either.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_omni.convert.dist_streaming import save_streamed
from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.model_config_file import (
    MODEL_CONFIG_FILE,
    OmniModelConfig,
    model_config_path,
    write_model_config,
)
from megatron_omni.training.checkpoint import (
    COMPLETE,
    _write_manifest,  # the manifest load_checkpoint verifies, for folders written here
    complete_checkpoints,
    iteration_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

ASSETS_DIR = "hf_assets"
# Files of a Hugging Face model folder that are not weights or the model config.
HF_ASSET_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
)


def copy_assets(src: Path, dst: Path) -> list[str]:
    """Copy the asset files present in ``src`` to ``dst``; returns their names."""
    copied = [name for name in HF_ASSET_FILES if (src / name).is_file()]
    if copied:
        dst.mkdir(parents=True, exist_ok=True)
    for name in copied:
        shutil.copy2(src / name, dst / name)
    return copied


def _partial_dir(out_dir: Path) -> Path:
    # Deterministic, so every rank of a collective save agrees on it.
    return out_dir.parent / f".{out_dir.name}.partial"


def check_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConversionError(f"{out_dir} already exists; choose another folder or allow overwriting")
    return out_dir


@contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Single-process: yield a temporary folder that becomes ``out_dir`` only on success."""
    out_dir = check_output_dir(out_dir, overwrite)
    tmp = _partial_dir(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out_dir)


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def save_model_checkpoint(
    out_dir: str | Path,
    model_chunks: list,
    model_config: OmniModelConfig,
    assets_from: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Collective (every rank calls it): save the model weights, config and assets atomically."""
    out_dir = check_output_dir(out_dir, overwrite)
    tmp = _partial_dir(out_dir)
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    try:
        save_checkpoint(tmp, 0, model_chunks, None, run_state={"model_only": True})
        if rank0:
            # Weights only: RNG states restored from here would clobber the loading run's seeds;
            # the manifest is written again without them.
            shutil.rmtree(iteration_dir(tmp, 0) / "rng")
            (iteration_dir(tmp, 0) / COMPLETE).unlink()
            write_model_config(tmp, model_config)
            if assets_from is not None:
                copy_assets(Path(assets_from), tmp / ASSETS_DIR)
        dist.barrier()
        _write_manifest(iteration_dir(tmp, 0), 0)
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    if rank0:
        _publish(tmp, out_dir)
    dist.barrier()
    return out_dir


def save_streamed_model_checkpoint(out_dir: str | Path, model_config: OmniModelConfig, tensor, mapped: set[str],
                                   assets_from: str | Path | None = None, overwrite: bool = False) -> Path:
    """Single-process: the folder `save_model_checkpoint` writes, with each weight produced by
    ``tensor(state-dict name)`` (names: ``mapped``) while it is written, so no model is resident."""
    with atomic_output_dir(out_dir, overwrite) as tmp:
        folder = iteration_dir(tmp, 0)
        folder.mkdir()
        save_streamed(folder, model_config, tensor, mapped)
        torch.save({"step": 0, "layout": {"tp": 1, "pp": 1, "world": 1}, "model_only": True}, folder / "run_state.pt")
        _write_manifest(folder, 0)
        (tmp / "latest").write_text(folder.name)
        write_model_config(tmp, model_config)
        if assets_from is not None:
            copy_assets(Path(assets_from), tmp / ASSETS_DIR)
    return Path(out_dir)


def checkpoint_iteration_dir(checkpoint: str | Path, iteration: int | None = None) -> Path:
    """The complete ``iter_*`` folder to read: ``checkpoint`` itself when it is one, else the given
    ``iteration`` of the checkpoint folder (a model-only folder or a training ``train.save_dir``),
    else its latest complete one."""
    checkpoint = Path(checkpoint)
    if checkpoint in complete_checkpoints(checkpoint.parent):
        if iteration is not None and checkpoint != iteration_dir(checkpoint.parent, iteration):
            raise ConversionError(f"{checkpoint} is iteration {checkpoint.name}, not the requested {iteration}")
        return checkpoint
    complete = complete_checkpoints(checkpoint)
    if iteration is not None:
        wanted = iteration_dir(checkpoint, iteration)
        if wanted not in complete:
            raise ConversionError(f"{checkpoint}: no complete checkpoint of iteration {iteration}; complete ones: "
                                  f"{[p.name for p in complete] or 'none'}")
        return wanted
    found = latest_checkpoint(checkpoint)
    if found is None:
        raise ConversionError(f"{checkpoint}: no complete checkpoint (no iter_* folder with a manifest)")
    return found


def load_model_checkpoint(checkpoint: str | Path, model_chunks: list) -> Path:
    """Collective: load model weights (no optimizer) from a checkpoint saved at any TP/PP."""
    folder = checkpoint_iteration_dir(checkpoint)
    load_checkpoint(folder, model_chunks, None)
    return folder


def describe_run_checkpoints(save_dir: str | Path, model_config: OmniModelConfig, init_from: str | Path | None,
                             tokenizer_dir: str | Path | None) -> None:
    """Write omni_model.yaml and hf_assets/ into a training run's ``save_dir`` (rank 0, at run start).

    A run that starts from a converted checkpoint takes both from there, so the export names the
    source model's files; any other run writes its own model description and its tokenizer's files.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    try:
        config_file = model_config_path(init_from) if init_from else None
    except FileNotFoundError:  # initial weights of another kind: the run's own description
        config_file = None
    if config_file is not None:
        shutil.copy2(config_file, save_dir / MODEL_CONFIG_FILE)
        if (config_file.parent / ASSETS_DIR).is_dir():
            shutil.rmtree(save_dir / ASSETS_DIR, ignore_errors=True)
            shutil.copytree(config_file.parent / ASSETS_DIR, save_dir / ASSETS_DIR)
        return
    write_model_config(save_dir, model_config)
    if tokenizer_dir is not None:
        copy_assets(Path(tokenizer_dir), save_dir / ASSETS_DIR)
