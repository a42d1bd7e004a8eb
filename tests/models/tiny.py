"""Tiny model configurations and episodes for the model tests (seconds on a 2-core CPU)."""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from varmem.models import FamilyConfig, build_model, family

TINY = dict(channels=(4, 4, 8, 8, 8, 8), hidden=16, mlp_hidden=(16, 8), z_dim=4, match_dim=8, read_dim=8, learned_memory_size=5)


def tiny_config(name: str = "vma", architecture: str = "mlp", **overrides) -> FamilyConfig:
    """The family's config with the TINY sizes it has (the VAE has no match_dim, ...) and ``overrides``."""
    cls = family(name).config
    known = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in TINY.items() if k in known}, "architecture": architecture, **overrides})


def tiny_model(name: str = "vma", architecture: str = "mlp", size: int = 26, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(name, architecture, **overrides), (size, size))


def episodes(G: int = 2, M: int = 3, T: int = 2, size: int = 26, seed: int = 0):
    """Binary memory [G, M, 1, H, W] and targets [G, T, 1, H, W] (targets: noisy memory entries)."""
    g = torch.Generator().manual_seed(seed)
    memory = (torch.rand(G, M, 1, size, size, generator=g) < 0.3).float()
    pick = torch.randint(M, (G, T), generator=g)
    targets = torch.gather(memory, 1, pick[:, :, None, None, None].expand(G, T, 1, size, size)).clone()
    flip = torch.rand(targets.shape, generator=g) < 0.05
    return memory, torch.where(flip, 1 - targets, targets)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread (the machine is shared with training runs). Autouse in every test
    module that imports it (``from tests.models.tiny import one_torch_thread``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
