"""The conformance suite every model family passes: one class, subclassed once per family.

    # tests/models/families/test_<family>.py
    from tests.models.families.conformance import FamilyConformance

    class TestMyFamily(FamilyConformance):
        family = "my_family"
        configs = {"mlp": {"architecture": "mlp", "z_dim": 4}}   # tiny configs, by case name

Each test runs for every case of ``configs``. What it checks (issue 9, item 8):

* the config: typed fields, saved and read back equal, an unknown key and a bad type refused with
  an error naming ``model.<field>``, and the run config types its model section through it;
* the model builds from its config and says which family it is;
* one training step leaves every parameter, the loss, the bound and every objective term finite
  (and shaped [G, T]);
* a checkpoint round trip (state dict through bytes, config through its dict) is exact: the same
  objective, bit for bit, under the same seed;
* every declared capability works (shapes, ranges), every undeclared one is refused with a
  :class:`CapabilityError` naming the family;
* the validation bound and the evaluation protocol run exactly the parts the capabilities allow;
* kernels on (Triton; the interpreter on CPU) vs reference ops: the same losses over 3 Adam steps.
"""
from __future__ import annotations

import io
import math
from typing import Any, ClassVar

import pytest
import torch

from varmem.kernels import use_backend
from varmem.kernels.dispatch import interpret_mode
from varmem.models.base import Batch, Capability, CapabilityError, FewShotModel
from varmem.models.registry import family as get_family
from varmem.typed import ConfigError
from tests.assertions import assert_close

G, M, T, C = 2, 6, 3, 3  # episodes, memory entries (C classes × 2 shots), targets, classes


def episode_batch(size: int, seed: int = 0) -> Batch:
    """Binary memory [G, M, 1, H, W] of C classes × 2 shots; targets [G, T, 1, H, W], noisy copies of
    one entry of each class; labels [G, M] and [G, T]."""
    g = torch.Generator().manual_seed(seed)
    memory = (torch.rand(G, M, 1, size, size, generator=g) < 0.3).float()
    memory_labels = torch.arange(C).repeat_interleave(M // C).expand(G, M).clone()  # [G, M]
    pick = torch.arange(T) * (M // C)  # one entry of each class
    targets = memory[:, pick].clone()
    flip = torch.rand(targets.shape, generator=g) < 0.05
    targets = torch.where(flip, 1 - targets, targets)
    return Batch(memory, targets, memory_labels, memory_labels[:, pick].clone())


class FamilyConformance:
    family: ClassVar[str] = ""
    configs: ClassVar[dict[str, dict[str, Any]]] = {}
    image_size: ClassVar[int] = 8
    num_samples: ClassVar[int] = 3  # K of the objective (>= the family's min_num_samples)

    # --- helpers (``case``: a key of ``configs``, parametrized by tests/models/families/conftest.py) ---
    def build(self, case: str, seed: int = 0) -> FewShotModel:
        family = get_family(self.family)
        torch.manual_seed(seed)
        return family.build(family.config.from_dict(self.configs[case]), (self.image_size, self.image_size))

    def batch(self, seed: int = 0) -> Batch:
        return episode_batch(self.image_size, seed)

    def k(self, model: FewShotModel) -> int:
        return max(self.num_samples, model.min_num_samples)

    # --- the config ---------------------------------------------------------------------------
    def test_config_is_typed_saved_and_read_back(self, case):
        family = get_family(self.family)
        config = family.config.from_dict(self.configs[case])
        saved = config.to_dict()
        assert saved["name"] == self.family
        assert family.config.from_dict(saved) == config
        with pytest.raises(ConfigError, match=r"model: unknown key 'no_such_field'"):
            family.config.from_dict({**saved, "no_such_field": 1})
        typed = next((f for f in config.__dataclass_fields__.values() if f.type in ("int", int)), None)
        if typed is not None:
            with pytest.raises(ConfigError, match=rf"model\.{typed.name} must be an integer"):
                family.config.from_dict({**saved, typed.name: "not a number"})
        from varmem.distributed.config import RunConfig

        run = RunConfig.from_dict({"model": saved, "train": {"num_samples": self.k(self.build(case))}})
        assert run.model == config and run.to_dict()["model"] == saved

    def test_builds_from_its_config(self, case):
        model = self.build(case)
        assert isinstance(model, FewShotModel) and model.family == self.family
        assert model.capabilities <= set(Capability) and model.min_num_samples >= 1
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0

    # --- training -------------------------------------------------------------------------------
    def test_one_training_step_leaves_everything_finite(self, case):
        model, batch = self.build(case), self.batch()
        obj = model.objective(batch, self.k(model))
        assert obj.loss.shape == () and torch.isfinite(obj.loss)
        if obj.bound is not None:
            assert obj.bound.shape == (G, T) and torch.isfinite(obj.bound).all()
        for name, term in obj.terms.items():
            assert term.shape == (G, T), f"term {name}: {tuple(term.shape)}"
            assert torch.isfinite(term).all(), f"term {name} is not finite"
        assert set(obj.metrics()) == set(obj.names())
        opt = torch.optim.Adam(model.parameter_groups(0.0), lr=1e-2)  # the family's own groups
        opt.zero_grad()
        obj.loss.backward()
        grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        assert grads, "no parameter received a gradient"
        for n, g in grads:
            assert torch.isfinite(g).all(), f"gradient of {n} is not finite"
        opt.step()
        for n, p in model.named_parameters():
            assert torch.isfinite(p).all(), f"{n} is not finite after one step"

    def test_checkpoint_round_trip_is_exact(self, case):
        model, batch = self.build(case, seed=0), self.batch()
        model.train()
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        family = get_family(state["config"]["name"])
        other = family.build(family.config.from_dict(state["config"]), (self.image_size, self.image_size))
        other.load_state_dict(state["model"])
        other.train()
        torch.manual_seed(7)
        a = model.objective(batch, self.k(model))
        torch.manual_seed(7)
        b = other.objective(batch, self.k(model))
        assert torch.equal(a.loss, b.loss)
        for name in a.terms:
            assert torch.equal(a.terms[name], b.terms[name]), name

    # --- capabilities ---------------------------------------------------------------------------
    def test_declared_capabilities_work(self, case):
        model, batch = self.build(case), self.batch()
        model.eval()
        H = W = self.image_size
        if model.supports(Capability.LIKELIHOOD):
            ll = model.log_likelihood(batch, 5, chunk=2)
            assert ll.shape == (G, T) and torch.isfinite(ll).all()
        if model.supports(Capability.ADDRESS):
            log_q = model.address_log_posterior(batch)
            assert log_q.shape[:2] == (G, T)
            assert_close(log_q.logsumexp(-1), torch.zeros(G, T, dtype=log_q.dtype), atol=1e-4, rtol=0, name="Σ_a q(a|x)")
        if model.supports(Capability.SAMPLING):
            gen = torch.Generator().manual_seed(0)
            means = model.sample(batch.memory, 3, generator=gen)
            assert means.shape == (G, 3, 1, H, W) and (means >= 0).all() and (means <= 1).all()
            binary = model.sample(batch.memory, 3, generator=gen, kind="binary")
            assert set(binary.unique().tolist()) <= {0.0, 1.0}
        if model.supports(Capability.CLASSIFICATION):
            scores = model.class_scores(batch)
            assert scores.shape == (G, T, C)
            pred = model.classify(batch, torch.Generator().manual_seed(0))
            assert pred.shape == (G, T) and ((pred >= 0) & (pred < C)).all()
        if model.supports(Capability.EMBEDDING):
            features = model.embed(batch.targets)
            assert features.shape[:2] == (G, T) and torch.isfinite(features).all()

    def test_undeclared_capabilities_are_refused(self, case):
        model, batch = self.build(case), self.batch()
        calls = {
            Capability.LIKELIHOOD: lambda: model.log_likelihood(batch, 2),
            Capability.ADDRESS: lambda: model.address_log_posterior(batch),
            Capability.SAMPLING: lambda: model.sample(batch.memory, 2),
            Capability.CLASSIFICATION: lambda: model.class_scores(batch),
            Capability.EMBEDDING: lambda: model.embed(batch.targets),
        }
        for capability, call in calls.items():
            if capability in model.capabilities:
                continue
            with pytest.raises(CapabilityError, match=rf"'{self.family}' family does not declare the '{capability.value}'"):
                call()

    # --- evaluation -----------------------------------------------------------------------------
    def test_validation_runs_the_parts_it_can(self, case):
        from varmem.models.eval.bound import evaluate_bound

        model = self.build(case)
        result = evaluate_bound(model, [self.batch(0), self.batch(1)], samples=4, num_samples=self.k(model), chunk=2,
                                seed=0, device=torch.device("cpu"))
        assert ("nll_bound" in result) == model.supports(Capability.LIKELIHOOD)
        assert ("accuracy" in result) == model.supports(Capability.CLASSIFICATION)
        assert result["episodes"] == 2 * G
        for key, value in result.items():
            if isinstance(value, float) and key not in ("nll_bound_stderr", "accuracy_stderr"):
                assert math.isfinite(value), key

    # --- kernels ----------------------------------------------------------------------------------
    @pytest.mark.skipif(not torch.cuda.is_available() and not interpret_mode(),
                        reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)")
    def test_kernels_on_and_reference_give_the_same_losses(self, case):
        def losses(backend: str) -> torch.Tensor:
            model, batch = self.build(case, seed=0), self.batch()
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            out = []
            with use_backend(backend):
                for step in range(3):
                    torch.manual_seed(100 + step)
                    obj = model.objective(batch, self.k(model))
                    opt.zero_grad()
                    obj.loss.backward()
                    opt.step()
                    out.append(torch.stack([obj.loss.detach(), *(t.detach().float().mean() for t in obj.terms.values())]))
            return torch.stack(out)

        ref, tri = losses("reference"), losses("triton")
        assert_close(tri, ref, atol=1e-4, rtol=1e-5, name=f"{self.family}/{case} [loss, terms] per step, triton vs reference")
        assert not torch.equal(ref[0], ref[-1])  # the steps did change the model
