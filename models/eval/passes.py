"""How evaluation runs a model: in eval mode, under a seeded and forked RNG, in passes of bounded size.

Memory stays bounded whatever K is: each ``log_likelihood`` call holds at most
:func:`decodes_per_pass` (target, sample) decoder evaluations per chunk (the models merge chunks
with a running log-sum-exp) and, unless one episode is larger, at most :data:`IMAGES_PER_PASS`
memory and target images.

Determinism: the importance samples of each pass are drawn from torch's global RNG seeded with
:func:`derive_seed` under ``torch.random.fork_rng``, so the caller's RNG is untouched and two
evaluations with the same arguments give identical numbers. The global RNG (not a
``generator=`` argument) serves every family, including those whose hooks draw from it.
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Any, Iterator

import numpy as np
import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.spec import EpisodeSpec
from varmem.models.base import Batch, Capability

# Per ``log_likelihood`` pass: (target, sample) decoder evaluations per chunk, by device type.
# CPU: measured with the strokes VMA config (configs/vma_strokes.yaml: conv 16–32 maps, |z| = 32,
# 26×26), random parameters, 1 thread on the shared 2-core machine (load ≈ 3): 64 / 256 / 512 /
# 1,024 / 4,096 / 16,384 decodes per pass took 475 / 410–460 / 547 / 650–850 / 671 / 1,110 µs
# per decode with peak RSS 378 / 438 / 517 / 735 / 1,552 / 4,982 MB; 256 is the fastest and
# smallest. CUDA: not measured (no GPU in that session); 8,192 keeps that decoder's activations
# near 1 GB and is meant to fill the device. Other devices get the CPU value.
DECODES_PER_PASS = {"cpu": 256, "cuda": 8192}
# Memory and target images through the encoders per pass (one pass is never split below one
# episode, so a memory larger than this still goes through in one piece).
IMAGES_PER_PASS = 2048


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed from ``seed`` and tags (ints or strings): the noise of one pass of one table."""
    words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    for t in tags:
        words.append(zlib.crc32(t.encode()) if isinstance(t, str) else int(t) & 0xFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def device_of(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global RNG (CPU and ``device``) seeded with ``seed``; the caller's state restored after."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode without gradients; its training flag restored after."""
    was = model.training if isinstance(model, torch.nn.Module) else False
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was)


def decodes_per_pass(device: torch.device) -> int:
    return DECODES_PER_PASS.get(device.type, DECODES_PER_PASS["cpu"])


def pass_shape(targets: int, images: int, samples: int, chunk: int, device: torch.device) -> tuple[int, int]:
    """(episodes per pass, samples per chunk): a pass holds ≤ :func:`decodes_per_pass` decodes
    and ≤ IMAGES_PER_PASS images (at least one episode and one sample, whatever the sizes)."""
    budget = decodes_per_pass(device)
    chunk = max(1, min(chunk, samples, budget // max(1, targets)))
    per_pass = max(1, min(budget // max(1, targets * chunk), IMAGES_PER_PASS // max(1, images)))
    return per_pass, chunk


def check_positive(**values: int) -> None:
    """A DataError naming the first value that is not an int ≥ 1."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"evaluation: {name} must be an int >= 1, got {v!r}")


def spec_problem(spec: EpisodeSpec, dataset: Dataset) -> str | None:
    """Why ``dataset`` cannot supply episodes of ``spec``, or None when it can."""
    try:
        spec.check_against(dataset.split(spec.split), f"split {spec.split!r}")
    except DataError as exc:
        return str(exc)
    return None


def log_likelihood(model, memory: torch.Tensor, targets: torch.Tensor, samples: int, chunk: int,
                   exact_address: bool) -> torch.Tensor:
    """``model.log_likelihood`` of targets [G, T, 1, H, W] given memory [G, M, 1, H, W]: [G, T];
    ``exact_address`` (sum over the address instead of sampling it) only for address models."""
    batch = Batch(memory, targets)
    if exact_address:
        if not model.supports(Capability.ADDRESS):
            raise ValueError(f"exact_address=True: the {model.family!r} family has no address to sum over")
        return model.log_likelihood(batch, samples, chunk=chunk, exact_address=True)
    return model.log_likelihood(batch, samples, chunk=chunk)


def open_dataset(dataset: Dataset | str) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
