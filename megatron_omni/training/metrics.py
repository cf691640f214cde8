"""Run metrics (rank 0 only): one JSON line per step, TensorBoard scalars, Weights & Biases, and a
progress bar."""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from tqdm import tqdm

from megatron_omni.text.jsonl import drop_partial_last_line
from megatron_omni.training.config import LoggingConfig


class MetricsLogger:
    def __init__(self, output_dir: str | Path, cfg: LoggingConfig, total_steps: int, start_step: int = 0,
                 enabled: bool = True, config: dict | None = None):
        """``config``: the run's configuration, recorded with the W&B run."""
        self.enabled = enabled
        self.jsonl = None
        self.tb = None
        self.wandb = None
        self.bar = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.metrics_jsonl:
            # Append: a resumed run continues the same file; records carry their step. A line cut
            # short by a crash is dropped first (its step is logged again after the resume).
            drop_partial_last_line(out / "metrics.jsonl")
            self.jsonl = open(out / "metrics.jsonl", "a")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        if cfg.wandb_project is not None:
            self.wandb = start_wandb_run(out, cfg, config)
        if cfg.progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        scalars = {k: v for k, v in record.items() if k not in ("step", "time") and isinstance(v, (int, float))}
        if self.tb:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb:
            self.wandb.log(scalars, step=step)
        if self.bar:
            self.bar.update(step - self.bar.n)
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, float)}
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            import wandb

            self.wandb.finish()
            # finish() only informs the W&B service that the run is done; the service closes (and
            # flushes) the run's files later. teardown() waits for the service to exit, so the
            # offline run-*.wandb file is complete when close() returns.
            wandb.teardown()
            self.wandb = None
        if self.bar:
            self.bar.close()


def start_wandb_run(output_dir: Path, cfg: LoggingConfig, config: dict | None = None):
    """Start (or, for a resumed run, continue) the output folder's W&B run.

    The run id is kept in ``output_dir/wandb_run_id``: every later start with the same output
    folder continues that run. W&B ignores steps at or below the last one it has recorded, so a
    run resumed from an earlier checkpoint adds only the steps past it (metrics.jsonl has them all).
    """
    import wandb

    id_file = output_dir / "wandb_run_id"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
    root = Path(cfg.wandb_dir) if cfg.wandb_dir else output_dir
    root.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        name=cfg.wandb_run_name or output_dir.resolve().name,
        id=run_id,
        resume="allow",
        mode=cfg.wandb_mode,
        dir=str(root),
        config=config,
    )


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl; when a resumed run repeated steps, the latest record wins."""
    by_step: dict[int, dict] = {}
    with open(path) as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
