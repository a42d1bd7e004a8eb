"""The rows of ``RUN_DIR/metrics.jsonl`` and which of their values are the model's.

A row holds bookkeeping (kind, step, timings) and the family's values by name (the loss, the
bound, every term of its :class:`varmem.models.base.Objective`, validation results).
TensorBoard, Tune and the plots log every numeric value that is not bookkeeping, so that a new
family's terms reach them without any of them knowing the names. Importable without torch.
"""
from __future__ import annotations

from typing import Any

# Keys of a metrics row that are not values of the model.
NOT_LOGGED = ("kind", "step", "eta_s", "elapsed_s", "process_cpu_s", "samples", "objective_samples", "episodes")


def row_tags(row: dict[str, Any], exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The numeric keys of ``row`` that are logged: everything but bookkeeping and ``exclude``."""
    return tuple(k for k, v in row.items() if k not in NOT_LOGGED and k not in exclude
                 and isinstance(v, (int, float)) and not isinstance(v, bool))
