"""The research user's family (tests/plugins/memory_mixture.py) through the conformance suite."""
from varmem.models.registry import load_plugins

from tests.models.families.conformance import FamilyConformance

load_plugins(["tests.plugins.memory_mixture"])


class TestMemoryMixture(FamilyConformance):
    family = "memory_mixture"
    configs = {"default": {}, "weak-init": {"init_scale": 1.0}}
