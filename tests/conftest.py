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

# Tune searches sign their pickled state with a per-user key (varmem.distributed.search.trust): the test
# session uses a key of its own, never the user's ~/.config/varmem/search_key.
if "VARMEM_SEARCH_KEY_FILE" not in os.environ:
    import tempfile

    os.environ["VARMEM_SEARCH_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="varmem-test-key-"), "search_key")


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


@pytest.fixture(scope="session")
def ray_session():
    """One quiet local Ray cluster for the whole test session, always shut down."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        # address="local": always a new cluster, even if a stale /tmp/ray/ray_current_cluster points elsewhere
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
