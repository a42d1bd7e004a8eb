"""Training curves: the rows of ``RUN_DIR/metrics.jsonl`` of one or more runs, drawn with matplotlib.

    rows = read_metrics("runs/vma_strokes")                  # the "train" and "val" rows
    path, plotted = plot_training({"vma": rows, "vae": read_metrics("runs/vae_strokes")},
                                  ["loss", "nll_bound"], "out/training.png")
    plotted["vma"]["nll_bound"]["val"]                        # (steps, values) as drawn

One subplot per metric, x = step; runs by colour, train rows as solid lines, val rows dashed
with markers (a val value with a ``NAME_stderr`` beside it gets a ±1 s.e. band). Which values
are the model's is :func:`varmem.distributed.metrics.row_tags`'s call: a family's objective
terms have names of its own, and every one of them can be plotted by that name. ``varmem plot``
(``distributed/cli_plot.py``) is the command. Importable without torch; matplotlib is imported
when a figure is drawn.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from varmem.distributed.metrics import METRICS_FILE, parse_rows, row_tags
from varmem.typed import ConfigError

KINDS = ("train", "val")
STDERR = "_stderr"  # NAME_stderr: the standard error of NAME, drawn as a band around it
PANEL = (4.0, 3.0)  # inches per subplot: 480 × 360 px at varmem.plotting.DPI
COLUMNS = 3  # subplots per row at most

Series = dict[str, tuple[list[int], list[float]]]  # kind → (steps, values)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The train and val rows of ``run_dir/metrics.jsonl``, in file order. A half-written last line
    (a run still writing) is skipped; a missing or empty file, or a bad line, is a ConfigError."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} " + ("is a file, not a directory" if run_dir.exists() else "does not exist"))
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {run_dir} is not a varmem run directory, or its run has not "
                          "logged a step yet (a row comes every train.log_every steps)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not readable ({exc})") from None
    parsed, bad = parse_rows(text)
    numbered = [i for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    damaged = [i for i in bad if i != numbered[-1]]  # the last line may still be being written
    if damaged:
        raise ConfigError(f"{path}: line {damaged[0]} is not a JSON object; the file is damaged")
    rows = [row for _, row in parsed if row.get("kind") in KINDS and isinstance(row.get("step"), int)]
    if not rows:
        raise ConfigError(f"{path} holds no train or val rows yet: train the run for train.log_every steps first")
    return rows


def available_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """Every value the rows log (row_tags), in the order they first appear; ``NAME_stderr`` not apart."""
    seen: dict[str, None] = {}
    for row in rows:
        for tag in row_tags(row):
            seen.setdefault(tag, None)
    return [tag for tag in seen if not (tag.endswith(STDERR) and tag[: -len(STDERR)] in seen)]


def training_series(rows: list[dict[str, Any]], metric: str) -> Series:
    """kind → (steps, values) of ``metric`` over the rows that log it (train and val apart)."""
    out: Series = {}
    for row in rows:
        if metric in row_tags(row):
            steps, values = out.setdefault(row["kind"], ([], []))
            steps.append(int(row["step"]))
            values.append(float(row[metric]))
    return out


def choose_metrics(runs: dict[str, list[dict[str, Any]]], metrics: list[str] | None) -> list[str]:
    """``metrics`` checked against what the runs log (default: all of it); an unknown name is a
    ConfigError listing the available ones."""
    available: dict[str, None] = {}
    for rows in runs.values():
        for tag in available_metrics(rows):
            available.setdefault(tag, None)
    if not metrics:
        return list(available)
    unknown = [m for m in metrics if m not in available and not any(m in row_tags(r) for rows in runs.values() for r in rows)]
    if unknown:
        which = "the run" if len(runs) == 1 else f"any of the {len(runs)} runs"
        raise ConfigError(f"--metrics: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not "
                          f"logged by {which} ({', '.join(runs)}); available: {', '.join(available)}")
    return list(dict.fromkeys(metrics))


def figure_size(panels: int) -> tuple[float, float]:
    """Inches of a figure with ``panels`` subplots (COLUMNS per row)."""
    cols = min(COLUMNS, max(panels, 1))
    return (PANEL[0] * cols, PANEL[1] * math.ceil(max(panels, 1) / cols))


def plot_training(runs: dict[str, list[dict[str, Any]]], metrics: list[str] | None,
                  out: str | Path) -> tuple[Path, dict[str, dict[str, Series]]]:
    """Draw ``metrics`` (default: every value logged) of each labelled run's rows to the PNG ``out``;
    returns the path and label → metric → kind → (steps, values), exactly what was drawn."""
    from matplotlib.lines import Line2D

    from varmem.plotting import MARKERS, new_figure, save_figure

    metrics = choose_metrics(runs, metrics)
    cols = min(COLUMNS, len(metrics))
    rows_n = math.ceil(len(metrics) / cols)
    fig, axes = new_figure(figure_size(len(metrics)), nrows=rows_n, ncols=cols, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    plotted: dict[str, dict[str, Series]] = {label: {} for label in runs}
    kinds_drawn: set[str] = set()
    for k, metric in enumerate(metrics):
        ax = axes.flat[k]
        for (label, rows), color, marker in zip(runs.items(), colors, MARKERS * len(runs)):
            series = training_series(rows, metric)
            if not series:
                continue
            plotted[label][metric] = series
            for kind, (steps, values) in series.items():
                kinds_drawn.add(kind)
                val = kind == "val"
                ax.plot(steps, values, color=color, linestyle="--" if val else "-", linewidth=1.0 if val else 1.2,
                        marker=marker if val else None, markersize=3.5, alpha=0.9 if val else 0.8)
                if val:
                    _band(ax, rows, metric, color)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(labelsize=8)
        if k >= len(metrics) - cols:
            ax.set_xlabel("step", fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, linewidth=2, label=label) for label, c in zip(runs, colors)]
    handles += [Line2D([], [], color="0.35", linestyle="-" if kind == "train" else "--",
                       marker=None if kind == "train" else "o", markersize=3.5, label=kind)
                for kind in KINDS if kind in kinds_drawn]
    axes.flat[0].legend(handles=handles, fontsize=7, frameon=False)
    return save_figure(fig, out), plotted


def _band(ax, rows: list[dict[str, Any]], metric: str, color: str) -> None:
    """±1 standard error around the val values of ``metric`` where the rows log ``metric_stderr``."""
    err = metric + STDERR
    points = [(r["step"], float(r[metric]), float(r[err])) for r in rows
              if r["kind"] == "val" and metric in row_tags(r) and err in row_tags(r)]
    if points:
        steps, values, errs = zip(*points)
        ax.fill_between(steps, [v - e for v, e in zip(values, errs)], [v + e for v, e in zip(values, errs)],
                        color=color, alpha=0.15, linewidth=0)
