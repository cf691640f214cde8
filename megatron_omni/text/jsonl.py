"""Reading JSON-lines files with errors that name the file and line."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_jsonl(path: str | Path, error: type[Exception] = ValueError,
               required: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """("<path>, line N", object) for every non-blank line; raises `error` on a bad line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as failure:
                raise error(f"{where}: not valid JSON ({failure.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{where}: expected a JSON object")
            missing = [name for name in required if name not in record]
            if missing:
                raise error(f"{where}: missing field(s) {missing}")
            yield where, record
