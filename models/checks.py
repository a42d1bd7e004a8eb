"""Shape checks on episode tensors, with errors that name the argument, its shape and the fix."""
from __future__ import annotations

import torch


def check_images(name: str, t: torch.Tensor, image_shape: tuple[int, int], op: str) -> tuple[int, int]:
    """``t`` must be float [G, N, 1, H, W] with the model's H×W; returns (G, N)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor [G, N, 1, H, W], got {type(t).__name__}")
    H, W = image_shape
    if t.dim() != 5 or t.shape[2] != 1 or tuple(t.shape[3:]) != (H, W):
        raise ValueError(
            f"{op}: {name} must be [G, N, 1, {H}, {W}] (episodes × images × 1 channel × the model's image size), "
            f"got {tuple(t.shape)}; batch episodes with EpisodeBatch.stack"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{op}: {name} {tuple(t.shape)} is empty")
    if not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be floating point in [0, 1], got {t.dtype}")
    return t.shape[0], t.shape[1]


def check_num_samples(num_samples: int, minimum: int, op: str, why: str = "") -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < minimum:
        raise ValueError(f"{op}: num_samples must be an int >= {minimum}{why}, got {num_samples!r}")
    return num_samples
