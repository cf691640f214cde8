"""Errors of the checkpoint converters: every message names the file and the keys at fault."""
from __future__ import annotations

_SHOWN = 40  # keys listed per problem before "... and N more"


class ConversionError(RuntimeError):
    """A checkpoint cannot be converted; nothing was written."""


def _listing(keys: list[str]) -> str:
    shown = "\n    ".join(keys[:_SHOWN])
    more = f"\n    ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"\n    {shown}{more}"


def check_keys_and_shapes(source: str, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                          hint: str = "") -> None:
    """Raise one ConversionError listing missing keys, unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {list(found[key])}, expected {list(expected[key])}"
        for key in set(found) & set(expected)
        if tuple(found[key]) != tuple(expected[key])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s):{_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s):{_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):{_listing(mismatched)}")
    if problems:
        raise ConversionError(f"{source} does not match the model its config describes:\n  " + "\n  ".join(problems) + hint)
