"""Model-only Megatron checkpoints: the training checkpoint format without optimizer state.

Layout::

    out_dir/
      latest, iter_0000000/     megatron_omni.training.checkpoint format (dist_checkpointing,
                                global shapes: loads at any TP/PP), no optimizer, no RNG states
      omni_model.yaml           the model description (read_model_config)
      hf_assets/                tokenizer, processor and generation files of the source model

The whole folder is written under a hidden temporary name and renamed when complete, so a failed
save never leaves a partial ``out_dir`` behind.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.model_config_file import OmniModelConfig, write_model_config
from megatron_omni.training.checkpoint import COMPLETE, latest_checkpoint, load_checkpoint, save_checkpoint

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
            # Weights only: RNG states restored from here would clobber the loading run's seeds.
            shutil.rmtree(checkpoint_iteration_dir(tmp) / "rng")
            write_model_config(tmp, model_config)
            if assets_from is not None:
                copy_assets(Path(assets_from), tmp / ASSETS_DIR)
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    if rank0:
        _publish(tmp, out_dir)
    dist.barrier()
    return out_dir


def checkpoint_iteration_dir(checkpoint: str | Path) -> Path:
    """The complete ``iter_*`` folder of a checkpoint folder (or the given ``iter_*`` folder)."""
    checkpoint = Path(checkpoint)
    if (checkpoint / COMPLETE).is_file():
        return checkpoint
    found = latest_checkpoint(checkpoint)
    if found is None:
        raise ConversionError(f"{checkpoint}: no complete checkpoint (no iter_*/{COMPLETE} folder)")
    return found


def load_model_checkpoint(checkpoint: str | Path, model_chunks: list) -> Path:
    """Collective: load model weights (no optimizer) from a checkpoint saved at any TP/PP."""
    folder = checkpoint_iteration_dir(checkpoint)
    load_checkpoint(folder, model_chunks, None)
    return folder
