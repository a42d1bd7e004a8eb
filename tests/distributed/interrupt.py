"""The trainer tests' stand-in model that interrupts a Tune search, for the ``varmem tune --resume`` test.

In its ``interrupt_at_call``-th training call the model sends SIGUSR1 to the process ``pid`` (the
search's driver: Tune takes SIGUSR1, like Ctrl-C, as "save the experiment and stop"), once (a marker
file), then waits up to ``hold_s`` seconds so that the trial goes no further before Tune stops it: the
search is interrupted between two checkpoints of a running trial. Numerically the model is the stand-in.

Config: ``model: {factory: tests.distributed.interrupt:build, latent: 4, interrupt_at_call: 6, pid: PID, marker: PATH}``.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.training.standin import LinearMemoryVAE

FACTORY = "tests.distributed.interrupt:build"


class InterruptingVAE(LinearMemoryVAE):
    def __init__(self, image_shape, *, interrupt_at_call: int, pid: int, marker: str, hold_s: float = 60.0, **kwargs):
        super().__init__(image_shape, **kwargs)
        self.interrupt_at_call, self.pid, self.marker, self.hold_s = interrupt_at_call, pid, Path(marker), hold_s
        self.calls = 0

    def objective(self, memory, targets, num_samples):
        if self.training:
            self.calls += 1
            if self.calls == self.interrupt_at_call and not self.marker.exists():
                self.marker.write_text(f"pid {os.getpid()} sent SIGUSR1 to {self.pid} in training call {self.calls}\n")
                os.kill(self.pid, signal.SIGUSR1)
                time.sleep(self.hold_s)
        return super().objective(memory, targets, num_samples)


def build(model: dict, image_shape: tuple[int, int]) -> InterruptingVAE:
    return InterruptingVAE(image_shape, **model)
