"""The one error type of configuration problems."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the offending dotted key."""
