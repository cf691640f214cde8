"""PNG curves of a run's metrics.jsonl (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

from megatron_omni.training.metrics import read_metrics


def plot_metrics(metrics_jsonl: str | Path, keys: list[str], out_png: str | Path, title: str | None = None) -> Path:
    """One panel per key, the metric against the step; keys missing from the run are an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_jsonl)
    if not records:
        raise ValueError(f"{metrics_jsonl} holds no metrics")
    missing = [k for k in keys if all(k not in r for r in records)]
    if missing:
        raise KeyError(f"{metrics_jsonl} has no metric {missing}; it has {sorted(set().union(*records) - {'step', 'time'})}")
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
