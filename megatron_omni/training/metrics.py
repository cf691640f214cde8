"""Run metrics: one JSON line per step, TensorBoard scalars, and a progress bar (rank 0 only)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from megatron_omni.config import LoggingConfig


class MetricsLogger:
    def __init__(self, output_dir: str | Path, cfg: LoggingConfig, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.metrics_jsonl:
            # Append: a resumed run continues the same file; records carry their step.
            self.jsonl = open(out / "metrics.jsonl", "a")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        if cfg.progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tb:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
        if self.bar:
            self.bar.update(step - self.bar.n)
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, float)}
            self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.bar:
            self.bar.close()


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
