"""How an evaluation says how it goes: lines through an ``emit`` callable (``print``, a log, a list
in a test), and for each part a bar on a terminal (``varmem.progress``) or, where output is a log,
a line every tenth of the part once it has run a few seconds (``varmem.progress.milestones``).

    say = Progress(print)                                  # Progress(None): silent
    with say.part("NLL vs examples", total=100) as done:   # done(k): k of 100 episodes finished
        ...
    say.finished("NLL vs examples", seconds, decodes, left=decodes_still_to_do)

``quiet`` silences everything (``varmem eval --quiet``); bars are drawn only on a terminal.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from varmem.progress import enabled, format_duration, milestones, progress

# a part that ends sooner than this says nothing between its start and its finished line
QUIET_FOR_S = 5.0


class Progress:
    def __init__(self, emit: Callable[[str], None] | None = print, *, quiet: bool = False):
        self.emit = None if quiet else emit
        self.quiet = quiet or emit is None
        self._rate: float | None = None  # decodes per second over the parts finished so far
        self._decodes = 0
        self._seconds = 0.0

    def say(self, line: str) -> None:
        if self.emit is not None:
            self.emit(line)

    @contextlib.contextmanager
    def part(self, what: str, total: int, unit: str = "episodes") -> Iterator[Callable[[int], None]]:
        """A ``done(k)`` callback for a part of ``total`` units: a bar on a terminal, else milestone lines."""
        if self.quiet:
            yield lambda done: None
            return
        if not enabled():
            yield milestones(total, self.say, label=f"  {what}: ", unit=unit, after_s=QUIET_FOR_S)
            return
        bar = progress(total=total, desc=what, unit=unit[:-1] if unit.endswith("s") else unit)
        shown = 0

        def done(k: int) -> None:
            nonlocal shown
            bar.update(max(0, k - shown))
            shown = max(shown, k)

        try:
            yield done
        finally:
            bar.close()

    def finished(self, what: str, seconds: float, decodes: int, left: int = 0, result: str = "") -> None:
        """``done: <what>: <result> (12 s, 40,000 decodes/s); about 0:03:10 left`` — the rate over every
        part finished so far predicts the ``left`` decodes still to run."""
        self._decodes += decodes
        self._seconds += seconds
        rate = self._decodes / self._seconds if self._decodes and self._seconds > 0 else None
        speed = f", {rate:,.0f} decodes/s" if decodes and rate else ""
        eta = f"; about {format_duration(left / rate)} left" if left and rate and left / rate >= 1 else ""
        self.say(f"done: {what}{': ' + result if result else ''} ({seconds:.1f} s{speed}){eta}")


def as_progress(progress: Callable[[str], None] | Progress | None) -> Progress:
    """A :class:`Progress` from a line emitter (or None: silent)."""
    return progress if isinstance(progress, Progress) else Progress(progress)


def timed() -> Callable[[], float]:
    """Seconds since this call, each time the returned function is called."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
