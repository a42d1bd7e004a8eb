"""The results of a search: one row per trial (its values, final and best validation NLL bound, steps,
status), ``results.csv``, ``results.json``, ``best_config.yaml`` and the table printed at the end.

The best trial has the lowest *final* validation NLL bound (its last validation).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from varmem.distributed.config import RunConfig, atomic_write_text
from varmem.distributed.rundir import FINAL_FILE, METRICS_FILE, read_metrics
from varmem.distributed.search.searchdir import (BEST_CONFIG, BEST_RUN, RESULTS_CSV, RESULTS_JSON, TRIALS_DIR,
                                                 SearchOptions)
from varmem.distributed.search.space import Space, apply_params, plain_value
from varmem.distributed.search.trial import METRIC, MODE, TIME_ATTR
from varmem.progress import progress

PROGRESS_DELAY_S = 3.0  # the bar appears only when collecting takes longer than this


def collect_rows(grid, space: Space, search_dir: Path, steps: int, *, quiet: bool = False) -> list[dict[str, Any]]:
    """One row per trial of Tune's ``ResultGrid``: the sampled values, from its run directory the final and
    best validation NLL and the steps trained, and its status (finished, stopped (ASHA), error, unfinished,
    not started). A progress bar when it takes more than a few seconds (many trials, remote storage)."""
    rows = []
    for i in progress(range(len(grid)), desc="collecting results", unit="trial", quiet=quiet, delay=PROGRESS_DELAY_S):
        result = grid[i]
        trial = Path(result.path).name
        run_dir = search_dir / TRIALS_DIR / trial
        metrics = read_metrics(run_dir / METRICS_FILE)
        vals = [float(r["nll_bound"]) for r in metrics if r.get("kind") == "val"]
        trained = max((int(r.get("step", 0)) for r in metrics if r.get("kind") == "train"), default=0)
        last = result.metrics or {}
        last_val = max((int(r.get("step", 0)) for r in metrics if r.get("kind") == "val"), default=0)
        finished = trained >= steps and ((run_dir / FINAL_FILE).is_file() or last_val >= steps)
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
            "val_nll_final": vals[-1] if vals else None,
            "val_nll_best": min(vals) if vals else None,
            "steps": trained,
            "status": status,
            "reports": int(last.get("training_iteration", 0)),
            "run_dir": str(run_dir),
            "error": _first_line(result.error) if result.error is not None else None,
        })
    return sorted(rows, key=lambda r: r["trial"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the lowest final validation NLL bound (the first of equals)."""
    scored = [r for r in rows if r["val_nll_final"] is not None and math.isfinite(r["val_nll_final"])]
    return min(scored, key=lambda r: r["val_nll_final"]) if scored else None


def write_results(search_dir: Path, given_dir: Path, base: RunConfig, space: Space, options: SearchOptions,
                  rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """results.csv, results.json and (when a trial validated) best_config.yaml; returns the best row."""
    best = best_row(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", *space, "val_nll_final", "val_nll_best", "steps", "status", "best", "run_dir", "error"])
    for r in rows:
        values = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in (r["params"][k] for k in space)]
        writer.writerow([r["trial"], *values,
                         _num(r["val_nll_final"]), _num(r["val_nll_best"]), r["steps"], r["status"],
                         int(best is not None and r["trial"] == best["trial"]), r["run_dir"], r["error"] or ""])
    atomic_write_text(search_dir / RESULTS_CSV, buffer.getvalue())
    summary = {
        "metric": METRIC, "mode": MODE, "time_attr": TIME_ATTR, "selection": "lowest final validation NLL bound",
        "space": {key: param.to_raw() for key, param in space.items()}, "options": asdict(options),
        "best": best["trial"] if best else None, "rows": rows,
    }
    atomic_write_text(search_dir / RESULTS_JSON, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    if best is not None:
        config = apply_params(base, best["params"]).with_overrides([f"run.out={json.dumps(str(given_dir / BEST_RUN))}"])
        header = (f"# The best trial of the search in {given_dir}: trial {best['trial']}, final validation NLL bound "
                  f"{best['val_nll_final']:.4f} nats after {best['steps']} steps ({best['status']}).\n"
                  + "".join(f"#   {key}: {json.dumps(value)}\n" for key, value in best["params"].items())
                  + f"# Train it: varmem train --config {given_dir / BEST_CONFIG}\n")
        atomic_write_text(search_dir / BEST_CONFIG, header + config.to_yaml())
    else:
        (search_dir / BEST_CONFIG).unlink(missing_ok=True)
    return best


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def format_table(rows: list[dict[str, Any]], space: Space, best: dict[str, Any] | None) -> str:
    """The results as an aligned text table; the best trial marked with *."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    header = ["trial", *space, "val NLL final", "val NLL best", "steps", "status"]
    body = []
    for r in rows:
        mark = " *" if best is not None and r["trial"] == best["trial"] else ""
        final = f"{r['val_nll_final']:.3f}" if r["val_nll_final"] is not None else "-"
        low = f"{r['val_nll_best']:.3f}" if r["val_nll_best"] is not None else "-"
        error = r["error"] if not r["error"] or len(r["error"]) <= 60 else r["error"][:57] + "..."
        status = r["status"] + (f" ({error})" if error else "")
        body.append([r["trial"] + mark, *(cell(r["params"][k]) for k in space), final, low, str(r["steps"]), status])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in [header] + body]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])
