"""The trainer tests' stand-in model that interrupts a Tune search, for the ``varmem tune --resume`` test.

In its ``interrupt_at_call``-th training call the model sends SIGUSR1 to the process ``pid`` (the
search's driver: Tune takes SIGUSR1, like Ctrl-C, as "save the experiment and stop"), once (a marker
file), then waits up to ``hold_s`` seconds so that the trial goes no further before Tune stops it: the
search is interrupted between two checkpoints of a running trial. Numerically the model is the stand-in.

Registered as the ``interrupting`` family (plugin ``tests.distributed.interrupt``).
Config: ``model: {name: interrupting, latent: 4, interrupt_at_call: 6, pid: PID, marker: PATH}``.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dataclasses import dataclass

from varmem.models.registry import register

from tests.distributed.standin import LinearMemoryVAE, StandinConfig

PLUGIN = "tests.distributed.interrupt"


@dataclass(frozen=True)
class InterruptingConfig(StandinConfig):
    interrupt_at_call: int = 6
    pid: int = 0
    marker: str = ""
    hold_s: float = 60.0


@register("interrupting", InterruptingConfig)
class InterruptingVAE(LinearMemoryVAE):
    def __init__(self, config: InterruptingConfig, image_shape):
        super().__init__(config, image_shape)
        self.interrupt_at_call, self.pid, self.marker, self.hold_s = (config.interrupt_at_call, config.pid,
                                                                      Path(config.marker), config.hold_s)
        self.calls = 0

    def objective(self, batch, num_samples, *, generator=None):
        if self.training:
            self.calls += 1
            if self.calls == self.interrupt_at_call and not self.marker.exists():
                self.marker.write_text(f"pid {os.getpid()} sent SIGUSR1 to {self.pid} in training call {self.calls}\n")
                os.kill(self.pid, signal.SIGUSR1)
                time.sleep(self.hold_s)
        return super().objective(batch, num_samples)
