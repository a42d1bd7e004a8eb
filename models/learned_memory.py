"""Learned memory (VMA section 4.3): |M| entries that are parameters, not an episode's exemplars.

The entries are images ``sigmoid(logits)`` in [0, 1], so they run through the same m-pyramid as
episode exemplars and can be looked at. The paper trains them without weight decay while the
rest of the model has 3e-4 L2: :func:`no_weight_decay_names` names them, and
``varmem.distributed.run.build_optimizer`` gives them a group with weight_decay 0.
"""
from __future__ import annotations

import torch
from torch import nn


class LearnedMemory(nn.Module):
    def __init__(self, size: int, image_shape: tuple[int, int]):
        super().__init__()
        H, W = image_shape
        # small random logits: grey images near 0.5 that differ, so addresses can be told apart
        self.logits = nn.Parameter(0.5 * torch.randn(size, 1, H, W))  # [M, 1, H, W]

    @property
    def size(self) -> int:
        return self.logits.shape[0]

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)  # [M, 1, H, W] in [0, 1]


def no_weight_decay_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s learned-memory parameters (trained without weight decay in the paper)."""
    return [f"{prefix}.logits" if prefix else "logits" for prefix, m in model.named_modules() if isinstance(m, LearnedMemory)]
