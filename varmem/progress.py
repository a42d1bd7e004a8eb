"""Progress of long commands: a tqdm bar on a terminal, nothing otherwise.

    from varmem.progress import progress
    for item in progress(items, desc="encoding", unit="episode", quiet=args.quiet):
        ...
    with progress(total=n, desc="episodes", quiet=quiet) as bar:
        bar.update(k)

The bar goes to stderr and only when stderr is a terminal (logs and pipes stay clean) and
``quiet`` is False. ``VARMEM_PROGRESS=1`` forces it on (e.g. under ``ray job submit``, whose log is
not a terminal), ``VARMEM_PROGRESS=0`` off.

Where output is a log rather than a terminal (a Ray worker, a validation inside training),
:func:`milestones` emits a line every tenth of the work instead, once the work has taken long.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Iterable

ENV = "VARMEM_PROGRESS"


def enabled(quiet: bool = False) -> bool:
    """Whether a bar is drawn: not ``quiet``, and stderr a terminal (or VARMEM_PROGRESS=1)."""
    if quiet:
        return False
    forced = os.environ.get(ENV)
    if forced is not None:
        return forced.strip() not in ("", "0", "false", "no")
    return sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             quiet: bool = False, **options: Any):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), disabled unless :func:`enabled`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled(quiet), file=sys.stderr,
                dynamic_ncols=True, leave=False, **options)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` for an unknown, infinite or NaN duration)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def milestones(total: int, emit: Callable[[str], None], *, label: str = "", unit: str = "episodes",
               fraction: float = 0.1, after_s: float = 0.0) -> Callable[[int], None]:
    """A ``progress(done)`` callback that emits ``{label}{done}/{total} {unit}, H:MM:SS so far, ETA H:MM:SS``
    each time another ``fraction`` of ``total`` is done, once ``after_s`` seconds have passed (a short
    task says nothing). For logs, where a bar cannot redraw: a validation or evaluation in a Ray worker."""
    t0 = time.perf_counter()
    every = max(1, math.ceil(total * fraction))
    shown = 0

    def progress(done: int) -> None:
        nonlocal shown
        seconds = time.perf_counter() - t0
        if done - shown < every or done >= total or seconds < after_s:
            return
        shown = done
        eta = seconds * (total - done) / done if done > 0 else float("inf")
        emit(f"{label}{done}/{total} {unit}, {format_duration(seconds)} so far, ETA {format_duration(eta)}")

    return progress
