"""VMA through the conformance suite: episode and learned memory, conv and MLP, learned and flat prior."""
from tests.models.families.conformance import FamilyConformance

NETS = {"mlp_hidden": [16, 8], "channels": [4, 4, 8, 8, 8, 8], "hidden": 16, "z_dim": 4, "match_dim": 8}


class TestVMA(FamilyConformance):
    family = "vma"
    configs = {
        "mlp": {**NETS, "architecture": "mlp"},
        "conv-flat-prior": {**NETS, "architecture": "conv", "prior": "flat"},
        "mlp-learned-memory": {**NETS, "architecture": "mlp", "memory": "learned", "learned_memory_size": 5},
    }
