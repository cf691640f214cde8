"""Reading JSON-lines files with errors that name the file and line."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def utf8_text(path: str | Path, error: type[Exception] = ValueError) -> str:
    """The file's text (a leading byte-order mark dropped); `error` names the file and the byte
    offset of the first byte that is not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise error(f"file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as failure:
        line = data.count(b"\n", 0, failure.start) + 1
        raise error(f"{path}: not UTF-8 text at byte offset {failure.start} (line {line}): "
                    f"{data[failure.start:failure.start + 4]!r}") from None


def read_jsonl(path: str | Path, error: type[Exception] = ValueError,
               required: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """("<path>, line N", object) for every non-blank line; raises `error` on a bad line."""
    path = Path(path)
    # "\n" only: a JSON string may hold U+2028 and other characters that str.splitlines() splits at.
    for line_number, line in enumerate(utf8_text(path, error).split("\n"), start=1):
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


def drop_partial_last_line(path: str | Path) -> None:
    """Cut a last line that a crash left without its newline, so appending keeps the file valid JSONL."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
