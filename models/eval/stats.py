"""Means, standard errors and 95% intervals of evaluation numbers.

Accuracy ``ci95`` is the half-width 1.96·s/√E over the E per-episode accuracies (the few-shot
literature's convention; it accounts for the targets of one episode sharing a support set);
``wilson95`` is the Wilson score interval over all targets taken as independent trials (still
informative when every episode scores 1.0).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

Z95 = 1.959963984540054  # Φ^{-1}(0.975)


def mean_se(x: torch.Tensor) -> tuple[float, float | None]:
    """(mean, standard error) of per-episode values x [E] (no standard error for E = 1)."""
    E = x.numel()
    return float(x.mean()), (float(x.std(unbiased=True) / math.sqrt(E)) if E > 1 else None)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)."""
    if trials < 1:
        return (float("nan"), float("nan"))
    n, p = float(trials), successes / float(trials)
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def accuracy_summary(correct: Sequence[np.ndarray] | np.ndarray) -> dict[str, Any]:
    """Accuracy of per-episode boolean arrays of correct targets, with 95% intervals.

    ``accuracy``: correct / targets; ``ci95``: Z95 · s / √E, s the sample standard deviation of
    the E per-episode accuracies (None for E < 2); ``wilson95``: Wilson over all targets.
    """
    rows = [np.asarray(c, dtype=bool).reshape(-1) for c in correct]
    if not rows:
        raise ValueError("accuracy_summary: no episodes")
    k = int(sum(r.sum() for r in rows))
    n = int(sum(r.size for r in rows))
    per_episode = np.array([r.mean() for r in rows], dtype=np.float64)  # [E]
    E = len(rows)
    ci = float(Z95 * per_episode.std(ddof=1) / math.sqrt(E)) if E > 1 else None
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n, "ci95": ci, "wilson95": [lo, hi], "episodes": E, "targets": n}
