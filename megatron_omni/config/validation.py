"""One walk over a run's configuration tree: every section validates its own fields.

A section is a dataclass that sits beside the code that reads it (``models/config.py``,
``training/config.py``, ``rewards/config.py``, ...). A section with rules defines
``validate(self, key: str) -> None`` and raises `ConfigError` with messages that start with its
dotted ``key`` (the same section class can sit at several places, e.g. ``oppo.sampling`` and
``opsd.sampling``). Rules between sections belong to the run configuration that holds them.
"""
from __future__ import annotations

import dataclasses


def validate_sections(node, key: str = "") -> None:
    """Depth first, children before their parent, so a parent's rules see valid children."""
    for field in dataclasses.fields(node):
        child = getattr(node, field.name)
        if dataclasses.is_dataclass(child) and not isinstance(child, type):
            validate_sections(child, f"{key}.{field.name}" if key else field.name)
    if key and hasattr(node, "validate"):
        node.validate(key)
