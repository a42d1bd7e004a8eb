"""The rows of ``RUN_DIR/metrics.jsonl``: reading them, and which of their values are the model's.

A row holds bookkeeping (kind, step, timings) and the family's values by name (the loss, the
bound, every term of its :class:`varmem.models.base.Objective`, validation results).
TensorBoard, Tune and the plots log every numeric value that is not bookkeeping, so that a new
family's terms reach them without any of them knowing the names. Importable without torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"  # in the run directory, one JSON object per line

# Keys of a metrics row that are not values of the model.
NOT_LOGGED = ("kind", "step", "eta_s", "elapsed_s", "process_cpu_s", "cpu_s", "samples", "objective_samples", "episodes")


def row_tags(row: dict[str, Any], exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The numeric keys of ``row`` that are logged: everything but bookkeeping and ``exclude``."""
    return tuple(k for k, v in row.items() if k not in NOT_LOGGED and k not in exclude
                 and isinstance(v, (int, float)) and not isinstance(v, bool))


def parse_rows(text: str) -> tuple[list[tuple[str, dict[str, Any]]], list[int]]:
    """(line, row) of every whole JSON object line of a metrics log, and the numbers of the lines that are
    not (a line cut short by a crash or a full disk, garbage)."""
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            bad.append(number)
            continue
        if isinstance(row, dict) and isinstance(row.get("step", 0), int):
            rows.append((line, row))
        else:
            bad.append(number)
    return rows, bad


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (lines that are not whole rows — the half-written last line of a
    run still writing — are skipped); [] for a missing file."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [row for _, row in parse_rows(text)[0]]
