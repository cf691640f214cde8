"""The MER emotion-wheel lexicon: any emotion word -> its class on each wheel, level 1 or 2.

Chain, as in the official MER-UniBench evaluation: word form -> base words (format.csv) ->
wheel words they are synonyms of (synonym.xlsx, all runs merged) -> the alphabetically first of
those wheel words that the wheel contains -> its level-1 class, or its level-2 class. Words with
no class on a wheel are dropped for that wheel. The alphabetical choice is what makes the
mapping deterministic when a word is a synonym of several wheel words.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.text.lexicon_files import (
    WheelTree,
    read_format_table,
    read_synonym_table,
    read_wheel_tree,
    wheel_files,
)
from megatron_omni.text.wordlists import normalize_word

LEVELS = ("level1", "level2")


def wheel_classes(tree: WheelTree, level: str) -> dict[str, str]:
    """Every word of one wheel -> its class at `level`.

    Later rows overwrite earlier ones for a word that appears twice, and a level-1 word maps to
    its alphabetically first level-2 child at level 2: both as the official code does.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    classes: dict[str, str] = {}
    for top, children in tree.items():
        classes[top] = top if level == "level1" else sorted(children)[0]
        for middle, leaves in children.items():
            target = top if level == "level1" else middle
            classes[middle] = target
            for leaf in leaves:
                classes[leaf] = target
    return classes


@dataclass(frozen=True)
class EmotionWheelLexicon:
    """Precomputed word -> class tables, one per (wheel, level)."""

    wheel_names: tuple[str, ...]
    tables: dict[tuple[str, str], dict[str, str]]

    @classmethod
    def from_dir(cls, wheel_dir: str | Path) -> EmotionWheelLexicon:
        folder = Path(wheel_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"emotion-wheel folder not found: {folder}")
        trees = {name: read_wheel_tree(path) for name, path in wheel_files(folder).items()}
        wheel_words = {word for classes in (wheel_classes(t, "level1") for t in trees.values()) for word in classes}
        form_to_bases = read_format_table(folder / "format.csv")
        synonyms = read_synonym_table(folder / "synonym.xlsx", wheel_words)
        # Sorted candidate wheel words per form, computed once for all wheels and levels.
        candidates = {
            form: sorted(word for base in bases for word in synonyms.get(base, ()))
            for form, bases in form_to_bases.items()
        }
        tables = {}
        for name, tree in trees.items():
            for level in LEVELS:
                classes = wheel_classes(tree, level)
                tables[(name, level)] = {
                    form: classes[first]
                    for form, words in candidates.items()
                    if (first := next((word for word in words if word in classes), None)) is not None
                }
        return cls(wheel_names=tuple(trees), tables=tables)

    def _table(self, wheel: str, level: str) -> dict[str, str]:
        try:
            return self.tables[(wheel, level)]
        except KeyError:
            raise KeyError(f"no table for wheel {wheel!r} at {level!r}; wheels: {self.wheel_names}, "
                           f"levels: {LEVELS}") from None

    def map_word(self, word: str, wheel: str, level: str = "level1") -> str | None:
        """The class of `word` on `wheel`, or None when the lexicon cannot place it."""
        return self._table(wheel, level).get(normalize_word(word))

    def map_words(self, words: Iterable[str], wheel: str, level: str = "level1") -> set[str]:
        """The set of classes of the mappable words; unmappable words are dropped."""
        table = self._table(wheel, level)
        return {table[key] for key in (normalize_word(word) for word in words) if key in table}
