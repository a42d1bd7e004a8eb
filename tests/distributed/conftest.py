"""Fixtures of the trainer's tests (in-process, Ray Train, Tune): one tiny dataset per session and one
torch thread per test; tiny run configs with the stand-in model are in tests/distributed/helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from varmem.episodes.build import build_dataset
from varmem.episodes.preprocess import Preprocessing
from tests.episodes.tiny import TinySource


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 background classes (2 alphabets) and 6 evaluation classes of 10 images each, 26×26."""
    out = tmp_path_factory.mktemp("data") / "tiny26"
    build_dataset(TinySource(alphabets=3, per_alphabet=6, n=10), out, preprocessing=Preprocessing.default(26),
                  progress=False, workers=1)
    return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The stand-in's tensors are tiny: on a shared 2-core machine two intra-op threads fight other
    processes for cores (a 8-step run took 4–12 s with 2 threads and 0.3–0.6 s with 1, load ≈ 5.5)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
