"""The trainer tests' stand-in model with an injected fault, for the Ray fault-tolerance test.

Rank ``kill_rank`` SIGKILLs its own process once, in the training objective of its
``kill_at_call``-th training call (one call per step with ``train.noise: episode`` and one episode
per rank): a worker dying mid-run, as after an out-of-memory kill. A marker file makes it happen
once; the restarted worker group continues from Ray's latest checkpoint. Numerically the model
is the stand-in: runs with and without the fault follow the same trajectory.

Registered as the ``faulty`` family (plugin ``tests.distributed.faulty``).
Config: ``model: {name: faulty, latent: 4, kill_at_call: 3, kill_rank: 1, marker: PATH}``.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import torch.distributed as dist

from dataclasses import dataclass

from varmem.models.registry import register

from tests.distributed.standin import LinearMemoryVAE, StandinConfig

PLUGIN = "tests.distributed.faulty"


@dataclass(frozen=True)
class FaultyConfig(StandinConfig):
    kill_at_call: int = 3
    kill_rank: int = 1
    marker: str = ""


@register("faulty", FaultyConfig)
class FaultyVAE(LinearMemoryVAE):
    def __init__(self, config: FaultyConfig, image_shape):
        super().__init__(config, image_shape)
        self.kill_at_call, self.kill_rank, self.marker = config.kill_at_call, config.kill_rank, Path(config.marker)
        self.calls = 0

    def objective(self, batch, num_samples, *, generator=None):
        if self.training:
            self.calls += 1
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            if rank == self.kill_rank and self.calls == self.kill_at_call and not self.marker.exists():
                self.marker.write_text(f"rank {rank} killed itself in training call {self.calls}, pid {os.getpid()}\n")
                os.kill(os.getpid(), signal.SIGKILL)
        return super().objective(batch, num_samples)
