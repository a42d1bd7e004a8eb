"""Fixtures of the distributed trainer's tests: the trainer tests' tiny dataset and one torch thread."""
from tests.training.conftest import one_torch_thread, tiny_data  # noqa: F401
