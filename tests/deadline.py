"""A per-example hang guard for the property tests: Hypothesis's own deadline only measures an example
that returns; ``with deadline(s):`` interrupts one that runs longer than ``s`` seconds (SIGALRM: main
thread, POSIX) with :class:`Hang`."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Hang(Exception):
    """An example ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
