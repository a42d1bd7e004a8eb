"""The results of a search: one row per trial (its values, final and best value of the search's metric,
steps, status), ``results.csv``, ``results.json``, ``best_config.yaml`` and the table printed at the end.

The best trial has the best *final* value of the metric (its last validation): the lowest validation NLL
bound by default, the highest accuracy for classifiers (distributed/search/metric.py). The columns are
``val_nll_final`` / ``val_nll_best`` for the NLL bound and ``val_<metric>_final`` / ``_best`` otherwise.
The search directory may be on object storage: everything is read and written through a ``Location``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from varmem.distributed.config import RunConfig
from varmem.distributed.rundir import FINAL_FILE
from varmem.distributed.search.metric import DEFAULT, SearchMetric
from varmem.distributed.search.searchdir import (BEST_CONFIG, BEST_RUN, RESULTS_CSV, RESULTS_JSON, TRIALS_DIR,
                                                 SearchOptions)
from varmem.distributed.search.space import Space, apply_params, plain_value
from varmem.distributed.search.trial import TIME_ATTR, read_rows
from varmem.episodes.storage import Location
from varmem.progress import progress

PROGRESS_DELAY_S = 3.0  # the bar appears only when collecting takes longer than this


def collect_rows(grid, space: Space, place: Location, steps: int, *, quiet: bool = False,
                 metric: SearchMetric = DEFAULT) -> list[dict[str, Any]]:
    """One row per trial of Tune's ``ResultGrid``: the sampled values, from its run directory the final and
    best value of the metric and the steps trained, and its status (finished, stopped (ASHA), error,
    unfinished, not started). A progress bar when it takes more than a few seconds (many trials, remote storage)."""
    rows = []
    better = min if metric.mode == "min" else max
    for i in progress(range(len(grid)), desc="collecting results", unit="trial", quiet=quiet, delay=PROGRESS_DELAY_S):
        result = grid[i]
        trial = Path(result.path).name
        run_dir = place.child(TRIALS_DIR, trial)
        metrics = read_rows(run_dir if not run_dir.is_local else run_dir.local_path)
        vals = [float(r[metric.name]) for r in metrics
                if r.get("kind") == "val" and isinstance(r.get(metric.name), (int, float))]
        trained = max((int(r.get("step", 0)) for r in metrics if r.get("kind") == "train"), default=0)
        last = result.metrics or {}
        last_val = max((int(r.get("step", 0)) for r in metrics if r.get("kind") == "val"), default=0)
        finished = trained >= steps and (last_val >= steps or run_dir.child(FINAL_FILE).is_file())
        if result.error is not None:
            status = "error"
        elif finished:
            status = "finished"
        elif not last:
            status = "not started"
        elif not last.get("done", False):
            status = "unfinished"
        else:
            status = "stopped"
        rows.append({
            "trial": trial,
            "params": {key: plain_value(result.config.get(key)) for key in space},
            metric.final_key: vals[-1] if vals else None,
            metric.best_key: better(vals) if vals else None,
            "steps": trained,
            "status": status,
            "reports": int(last.get("training_iteration", 0)),
            "run_dir": run_dir.uri,
            "error": _first_line(result.error) if result.error is not None else None,
        })
    return sorted(rows, key=lambda r: r["trial"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def best_row(rows: list[dict[str, Any]], metric: SearchMetric = DEFAULT) -> dict[str, Any] | None:
    """The trial with the best final value of the metric (the first of equals)."""
    scored = [r for r in rows if r[metric.final_key] is not None and math.isfinite(r[metric.final_key])]
    if not scored:
        return None
    pick = min if metric.mode == "min" else max
    return pick(scored, key=lambda r: r[metric.final_key])


def write_results(place: Location, given_dir: str, base: RunConfig, space: Space, options: SearchOptions,
                  rows: list[dict[str, Any]], metric: SearchMetric = DEFAULT) -> dict[str, Any] | None:
    """results.csv, results.json and (when a trial validated) best_config.yaml; returns the best row.
    ``given_dir``: the search directory as the user wrote it (best_config.yaml's run.out is inside it)."""
    best = best_row(rows, metric)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", *space, metric.final_key, metric.best_key, "steps", "status", "best", "run_dir", "error"])
    for r in rows:
        values = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in (r["params"][k] for k in space)]
        writer.writerow([r["trial"], *values,
                         _num(r[metric.final_key]), _num(r[metric.best_key]), r["steps"], r["status"],
                         int(best is not None and r["trial"] == best["trial"]), r["run_dir"], r["error"] or ""])
    place.child(RESULTS_CSV).write_text(buffer.getvalue())
    summary = {
        "metric": metric.tune_key, "mode": metric.mode, "time_attr": TIME_ATTR, "selection": metric.selection(),
        "metric_explicit": metric.explicit,
        "space": {key: param.to_raw() for key, param in space.items()}, "options": asdict(options),
        "best": best["trial"] if best else None, "rows": rows,
    }
    place.child(RESULTS_JSON).write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    if best is not None:
        best_run, best_config = _inside(given_dir, BEST_RUN), _inside(given_dir, BEST_CONFIG)
        config = apply_params(base, best["params"]).with_overrides([f"run.out={json.dumps(best_run)}"])
        header = (f"# The best trial of the search in {given_dir}: trial {best['trial']}, final {metric.label} "
                  f"{best[metric.final_key]:.4f}{metric.unit} after {best['steps']} steps ({best['status']}).\n"
                  + "".join(f"#   {key}: {json.dumps(value)}\n" for key, value in best["params"].items())
                  + f"# Train it: varmem train --config {best_config}\n")
        place.child(BEST_CONFIG).write_text(header + config.to_yaml())
    else:
        place.child(BEST_CONFIG).delete()
    return best


def _inside(given_dir: str, name: str) -> str:
    """``given_dir/name``, a URI kept as one (``Path`` would make ``s3:/b/x`` of ``s3://b/x``)."""
    from varmem.episodes.storage import is_uri

    return f"{str(given_dir).rstrip('/')}/{name}" if is_uri(given_dir) else str(Path(given_dir) / name)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def format_table(rows: list[dict[str, Any]], space: Space, best: dict[str, Any] | None,
                 metric: SearchMetric = DEFAULT) -> str:
    """The results as an aligned text table; the best trial marked with *."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    short = "val NLL" if metric.name == "nll_bound" else f"val {metric.name}"
    header = ["trial", *space, f"{short} final", f"{short} best", "steps", "status"]
    body = []
    for r in rows:
        mark = " *" if best is not None and r["trial"] == best["trial"] else ""
        final = f"{r[metric.final_key]:.3f}" if r[metric.final_key] is not None else "-"
        low = f"{r[metric.best_key]:.3f}" if r[metric.best_key] is not None else "-"
        error = r["error"] if not r["error"] or len(r["error"]) <= 60 else r["error"][:57] + "..."
        status = r["status"] + (f" ({error})" if error else "")
        body.append([r["trial"] + mark, *(cell(r["params"][k]) for k in space), final, low, str(r["steps"]), status])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in [header] + body]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])
