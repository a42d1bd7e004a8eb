"""The soft-attention baseline through the conformance suite."""
from tests.models.families.conformance import FamilyConformance

NETS = {"mlp_hidden": [16, 8], "channels": [4, 4, 8, 8, 8, 8], "hidden": 16, "z_dim": 4, "match_dim": 8, "read_dim": 8}


class TestSoftAttention(FamilyConformance):
    family = "soft_attention"
    configs = {
        "mlp": {**NETS, "architecture": "mlp"},
        "conv-learned-memory": {**NETS, "architecture": "conv", "memory": "learned", "learned_memory_size": 5},
    }
