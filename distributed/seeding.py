"""Seeds and RNG state of a run: what makes its trajectory a function of its config.

* ``train.seed`` seeds torch, numpy and Python before the model is built: the same initial
  parameters on every rank;
* the training noise (posterior samples) is seeded per rank by (seed, rank) (``train.noise: rank``)
  or per episode by (seed, global episode index) (``train.noise: episode``, the default: the noise
  follows the episode, whatever the number of workers);
* a checkpoint holds every rank's global RNG states (:func:`rng_state`), restored on resume
  (:func:`set_rng_state`), so a resumed run draws the same noise as one that never stopped.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def noise_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s training noise (posterior samples): distinct per rank, fixed by the config."""
    return int(np.random.SeedSequence([seed, rank, 0x766D]).generate_state(1, dtype=np.uint64)[0] >> 1)


def episode_noise_seed(seed: int, index: int) -> int:
    """The seed of the training noise of the episode with global index ``index`` (``train.noise: episode``)."""
    return int(np.random.SeedSequence([seed, index, 0x6570]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global RNG state the loop depends on, in types that ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (a checkpoint's copy: lists where it had tuples)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
