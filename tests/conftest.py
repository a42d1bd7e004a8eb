"""Test session setup.

Without a GPU the Triton kernels run in the interpreter, which reads ``TRITON_INTERPRET``
when ``@triton.jit`` decorates a function: it is set here, before any test imports ``kernels``.
"""
import os
import shutil

if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "ray: starts a local Ray cluster (one per session)")
    config.addinivalue_line("markers", "slow: takes more than ~10 s on a 2-core CPU")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
