"""The VAE baseline through the conformance suite."""
from tests.models.families.conformance import FamilyConformance


class TestVAE(FamilyConformance):
    family = "vae"
    configs = {
        "mlp": {"architecture": "mlp", "mlp_hidden": [16, 8], "z_dim": 4},
        "conv": {"architecture": "conv", "channels": [4, 4, 8, 8, 8, 8], "hidden": 16, "z_dim": 4},
    }
