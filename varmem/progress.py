"""Progress of long commands: a tqdm bar on a terminal, nothing otherwise.

    from varmem.progress import progress
    for item in progress(items, desc="encoding", unit="episode", quiet=args.quiet):
        ...
    with progress(total=n, desc="episodes", quiet=quiet) as bar:
        bar.update(k)

The bar goes to stderr and only when stderr is a terminal (logs and pipes stay clean) and
``quiet`` is False. ``VARMEM_PROGRESS=1`` forces it on (e.g. under ``ray job submit``, whose log is
not a terminal), ``VARMEM_PROGRESS=0`` off.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

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
