"""Reading and writing Hugging Face safetensors folders, one tensor at a time.

Reading takes every tensor's shape and dtype from the file headers first, so key and shape
problems are reported before any weight is read; a tensor is then read with plain file reads
straight into its own buffer (no memory map, so no pages of the shard stay resident). Writing
fills shards up to a size limit and names them as transformers does
(``model-00001-of-00003.safetensors`` + index).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_omni.convert.errors import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
THINKER_PREFIX = "thinker."
# Parts of a full checkpoint that are not the thinker (speech generation): Qwen2.5-Omni's talker
# and token2wav, Qwen3-Omni's talker and code2wav.
NON_THINKER_PREFIXES = ("talker.", "token2wav.", "code2wav.")

_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}
_HEADER_LENGTH_BYTES = 8  # a safetensors file starts with the header's length, little-endian


@dataclass(frozen=True)
class TensorInfo:
    file: str
    key: str  # the key as stored in the file
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    offset: int  # of the tensor's bytes in the file
    nbytes: int


def _read_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file, from its JSON header."""
    try:
        with path.open("rb") as fh:
            length = int.from_bytes(fh.read(_HEADER_LENGTH_BYTES), "little")
            header = json.loads(fh.read(length))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path}: not a safetensors file ({exc})") from None
    start = _HEADER_LENGTH_BYTES + length
    return {
        key: TensorInfo(path.name, key, tuple(entry["shape"]), _SAFETENSORS_DTYPES.get(entry["dtype"]),
                        start + entry["data_offsets"][0], entry["data_offsets"][1] - entry["data_offsets"][0])
        for key, entry in header.items() if key != "__metadata__"
    }


def _shard_files(folder: Path) -> list[str]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ConversionError(f"{index}: not a safetensors index (needs a 'weight_map'): {exc}") from None
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise ConversionError(f"{index} names shard files that do not exist: {missing}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if found:
        return found
    other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    raise ConversionError(
        f"{folder}: no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})"
        + (f"; found {other}: convert them to safetensors first" if other else "")
    )


class HFCheckpoint:
    """A HF folder's tensors: the thinker's keyed without the ``thinker.`` prefix, the speech
    generation's (``talker.*``, ``token2wav.*``, ``code2wav.*``) apart. Reads one tensor at a time."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = _shard_files(self.folder)
        stored: dict[str, TensorInfo] = {}
        for name in self.files:
            stored.update(_read_header(self.folder / name))
        self.speech = {k: info for k, info in stored.items() if k.startswith(NON_THINKER_PREFIXES)}
        kept = [k for k in stored if k not in self.speech]
        # A full checkpoint prefixes every thinker key; a thinker folder prefixes none. Keys that
        # break the pattern stay as they are and surface as unexpected keys.
        self.prefix = THINKER_PREFIX if any(k.startswith(THINKER_PREFIX) for k in kept) else ""
        self.tensors = {
            (k[len(self.prefix):] if k.startswith(self.prefix) else k): stored[k] for k in kept
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: info.shape for key, info in self.tensors.items()}

    def dtypes(self) -> set[torch.dtype | None]:
        return {info.dtype for info in self.tensors.values()}

    def read(self, info: TensorInfo) -> torch.Tensor:
        """One tensor, read into a buffer of its own size."""
        if info.dtype is None:
            raise ConversionError(f"{self.folder / info.file}: {info.key} has a dtype this converter does not read")
        buffer = torch.empty(info.nbytes, dtype=torch.uint8)
        with (self.folder / info.file).open("rb") as fh:
            fh.seek(info.offset)
            if fh.readinto(buffer.numpy()) != info.nbytes:
                raise ConversionError(f"{self.folder / info.file}: truncated ({info.key} ends past the end of the file)")
        return buffer.view(info.dtype).reshape(info.shape)

    def largest_file_bytes(self) -> int:
        return max((self.folder / name).stat().st_size for name in self.files)


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2000KB' or a byte count (decimal units, as transformers uses)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", str(text).upper())
    if not match:
        raise ValueError(f"size {text!r} must look like 5GB, 500MB or a number of bytes")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, None: 1}[match.group(2)]
    return int(float(match.group(1)) * scale)


class ShardWriter:
    """Add tensors in order; a shard is written whenever the next tensor would overflow it."""

    def __init__(self, folder: Path, max_shard_bytes: int, log: Callable[[str], None] = print):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self.log = log
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[str, list[str], int]] = []  # (temporary file, keys, bytes)

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[key] = tensor
        self._pending_bytes += size

    def _flush(self) -> None:
        name = f"shard-{len(self._written):05d}.tmp"
        save_file(self._pending, str(self.folder / name), metadata={"format": "pt"})
        self._written.append((name, list(self._pending), self._pending_bytes))
        self.log(f"[convert] wrote shard {len(self._written)}: {len(self._pending)} tensors, {self._pending_bytes / 1e9:.2f} GB")
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard, give the shards their final names, write the index if several."""
        if self._pending:
            self._flush()
        total = len(self._written)
        names = [SINGLE_FILE] if total == 1 else [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
        weight_map = {}
        for (tmp_name, keys, _), final in zip(self._written, names):
            os.replace(self.folder / tmp_name, self.folder / final)
            weight_map.update({key: final for key in keys})
        if total > 1:
            index = {"metadata": {"total_size": sum(size for *_, size in self._written)}, "weight_map": weight_map}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return names
