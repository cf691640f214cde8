"""Readers for the MER emotion-wheel lexicon files (format.csv, synonym.xlsx, wheelN.xlsx).

The files are not shipped with the package: users point `--wheel-dir` at their copy. Every
reader names the file, row and column of anything it cannot use.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from megatron_omni.text.wordlists import normalize_word, parse_emotion_words

WHEEL_LEVELS = ("level1", "level2", "level3")
_WHEEL_FILE = re.compile(r"^wheel(\d+)\.xlsx$")
_SYNONYM_RUN = re.compile(r"^word_run(\d+)$")

# wheel tree: level1 -> level2 -> [level3 ...], in file order (the order decides ties later).
WheelTree = dict[str, dict[str, list[str]]]


class LexiconError(ValueError):
    """A lexicon file is missing or malformed."""


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise LexiconError(f"emotion-wheel lexicon file not found: {path}")
    return path


def _xlsx_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, object]]]:
    """(excel row number, {column: value}) for each non-empty data row of the first sheet."""
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(_require_file(path), read_only=True, data_only=True)
    except LexiconError:
        raise
    except Exception as error:  # openpyxl raises several unrelated types for a broken file
        raise LexiconError(f"{path}: not a readable .xlsx file ({error})") from error
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [str(cell).strip() if cell is not None else "" for cell in next(rows, ())]
        missing = [name for name in required if name not in header]
        if missing:
            raise LexiconError(f"{path}: header row lacks column(s) {missing}; found {header}")
        for row_number, cells in enumerate(rows, start=2):
            if all(cell is None or str(cell).strip() == "" for cell in cells):
                continue
            yield row_number, {name: cells[i] if i < len(cells) else None for i, name in enumerate(header)}
    finally:
        workbook.close()


def _cell_text(value: object) -> str:
    return "" if value is None else str(value)


def read_format_table(path: Path) -> dict[str, list[str]]:
    """format.csv: word form -> base words (every base word also maps to itself)."""
    form_to_bases: dict[str, list[str]] = {}
    with open(_require_file(path), newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in ("name", "format") if name not in (reader.fieldnames or [])]
        if missing:
            raise LexiconError(f"{path}: header lacks column(s) {missing}; found {reader.fieldnames}")
        for row in reader:
            base = normalize_word(row["name"] or "")
            if not base:
                raise LexiconError(f"{path}, line {reader.line_num}: empty 'name'")
            for form in parse_emotion_words(row["format"] or ""):
                form_to_bases.setdefault(form, []).append(base)
            form_to_bases.setdefault(base, []).append(base)
    return form_to_bases


def read_wheel_tree(path: Path) -> WheelTree:
    """wheelN.xlsx: columns level1/level2/level3, blank cells repeating the cell above."""
    tree: WheelTree = {}
    current = {level: "" for level in WHEEL_LEVELS}
    for row_number, row in _xlsx_rows(path, WHEEL_LEVELS):
        for level in WHEEL_LEVELS:
            text = normalize_word(_cell_text(row[level]))
            if text:
                current[level] = text
            elif not current[level]:
                raise LexiconError(f"{path}, row {row_number}: '{level}' is empty and has no value above it")
        tree.setdefault(current["level1"], {}).setdefault(current["level2"], []).append(current["level3"])
    if not tree:
        raise LexiconError(f"{path}: no wheel rows")
    return tree


def wheel_files(wheel_dir: Path) -> dict[str, Path]:
    """{'wheel1': path, ...} for every wheelN.xlsx in the folder, in numeric order."""
    found = sorted((int(m.group(1)), p) for p in wheel_dir.iterdir() if (m := _WHEEL_FILE.match(p.name)))
    if not found:
        raise LexiconError(f"{wheel_dir}: no wheelN.xlsx files")
    return {f"wheel{number}": path for number, path in found}


def read_synonym_table(path: Path, wheel_words: set[str]) -> dict[str, set[str]]:
    """synonym.xlsx: word -> the wheel words it is a synonym of, merged over all runs.

    Each run k has a `word_runk` column (a wheel word) and a `synonym_runk` column (its synonyms);
    a wheel word is its own synonym.
    """
    import openpyxl

    workbook = openpyxl.load_workbook(_require_file(path), read_only=True)
    try:
        header = next(workbook.worksheets[0].iter_rows(values_only=True, max_row=1), ())
    finally:
        workbook.close()
    runs = sorted(int(m.group(1)) for cell in header if (m := _SYNONYM_RUN.match(str(cell or "").strip())))
    if not runs:
        raise LexiconError(f"{path}: no 'word_runN' columns in the header row")
    required = tuple(name for run in runs for name in (f"word_run{run}", f"synonym_run{run}"))
    synonyms: dict[str, set[str]] = {}
    for row_number, row in _xlsx_rows(path, required):
        for run in runs:
            column = f"word_run{run}"
            wheel_word = normalize_word(_cell_text(row[column]))
            if wheel_word not in wheel_words:
                raise LexiconError(f"{path}, row {row_number}, column '{column}': "
                                   f"{wheel_word!r} is not a word of any emotion wheel")
            synonyms.setdefault(wheel_word, set()).add(wheel_word)
            for synonym in parse_emotion_words(_cell_text(row[f"synonym_run{run}"])):
                synonyms.setdefault(synonym, set()).add(wheel_word)
    return synonyms
