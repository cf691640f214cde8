"""The command line of a training entry point: ``--config YAML`` plus dotted overrides."""
from __future__ import annotations

import argparse
from typing import Callable

import torch.distributed as dist

from megatron_omni.config import ConfigError, load_config
from megatron_omni.data.errors import DataError
from megatron_omni.parallel import init_distributed
from megatron_omni.training.config import RunConfig


def launch(description: str, run: Callable, config_cls=RunConfig, argv: list[str] | None = None) -> None:
    """Parse, start torch.distributed, ``run(cfg)``; a config or data problem exits with its message (no traceback)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: the dataclass defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=10")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, cls=config_cls)
        init_distributed()
        run(cfg)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    except DataError as exc:  # a bad sample without data.skip_bad_samples, or too many skipped
        raise SystemExit(f"data error: {exc}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
