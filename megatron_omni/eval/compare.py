"""Comparing MER-UniBench results across checkpoints: one Markdown table, one bar chart per set."""
from __future__ import annotations

import json
import re
from pathlib import Path


class ResultsFileError(ValueError):
    """A results.json is missing or not a MER-UniBench summary."""


def load_results(path: str | Path) -> tuple[str, dict]:
    """(name, summary) of a results.json or of a folder holding one; the name is the folder's."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ResultsFileError(f"results file not found: {path}")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as failure:
        raise ResultsFileError(f"{path}: not valid JSON ({failure.msg})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("datasets"), list):
        raise ResultsFileError(f"{path}: no 'datasets' list (not a tools/evaluate.py results.json)")
    for index, entry in enumerate(summary["datasets"]):
        if not (isinstance(entry, dict) and "dataset" in entry and "score" in entry):
            raise ResultsFileError(f"{path}: datasets[{index}] lacks 'dataset' or 'score'")
    return path.parent.name, summary


def comparison_table(runs: list[tuple[str, dict]]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(data-set columns in first-seen order, {run: {data set: score x 100}})."""
    columns: list[str] = []
    scores: dict[str, dict[str, float]] = {}
    for name, summary in runs:
        if name in scores:
            raise ResultsFileError(f"two results are named {name!r}; give --names")
        scores[name] = {}
        for entry in summary["datasets"]:
            title = f"{entry['dataset']} ({entry['metric']})" if "metric" in entry else entry["dataset"]
            if title not in columns:
                columns.append(title)
            scores[name][title] = 100 * float(entry["score"])
    return columns, scores


def comparison_markdown(runs: list[tuple[str, dict]]) -> str:
    """Rows: runs; columns: every data set any run has, then the run's own mean and its set count.
    A run without a set shows "-", and its mean is over fewer sets (so not comparable)."""
    columns, scores = comparison_table(runs)
    header = ["Checkpoint", *columns, "Mean", "Sets"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, summary in runs:
        cells = [f"{scores[name][c]:.2f}" if c in scores[name] else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {float(summary.get('mean', 0.0)):.2f} | "
                     f"{len(scores[name])} |")
    counts = {len(s) for s in scores.values()}
    note = ["", "- The runs score different sets: their means are not comparable."] if len(counts) > 1 else []
    return "\n".join(lines + note) + "\n"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def comparison_charts(runs: list[tuple[str, dict]], out_dir: str | Path) -> list[Path]:
    """One PNG bar chart per data set (bars: the runs that have it), plus one of the means."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns, scores = comparison_table(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {c: {name: s[c] for name, s in scores.items() if c in s} for c in columns}
    charts["Mean"] = {name: float(summary.get("mean", 0.0)) for name, summary in runs}
    written = []
    for title, values in charts.items():
        figure, axis = plt.subplots(figsize=(max(4.0, 1.2 * len(values) + 2), 3.5))
        bars = axis.bar(list(values), list(values.values()), color="tab:blue")
        axis.bar_label(bars, fmt="%.2f")
        axis.set_title(title)
        axis.set_ylabel("score x 100")
        axis.set_ylim(0, max(100.0, *values.values()) * 1.08)
        figure.tight_layout()
        path = out_dir / f"compare_{_slug(title)}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
