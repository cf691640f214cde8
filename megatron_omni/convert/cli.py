"""What the conversion tools share: a failed check is one message on stderr and exit status 1."""
from __future__ import annotations

import sys
from collections.abc import Callable

from megatron_omni.convert.errors import ConversionError


def run_conversion(convert: Callable, *args, **kwargs) -> int:
    try:
        convert(*args, **kwargs)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
