"""VMA, the VAE and the soft-attention baseline: shapes, gradients, estimators, memory modes, config."""
from __future__ import annotations

import math

import pytest
import torch

from varmem.models.base import Batch

from varmem.models import VAE, VMA, SoftAttentionMemory, VAEConfig, VMAConfig, build_model, family
from varmem.models.base import Capability, CapabilityError
from varmem.typed import ConfigError
from varmem.models.estimators import chunked_log_mean_exp
from tests.assertions import assert_close
from tests.models.tiny import episodes, tiny_config, tiny_model

CASES = [
    (name, arch, size, memory)
    for name in ("vma", "vae", "soft_attention")
    for arch in ("conv", "mlp")
    for size in (26, 28)
    for memory in ("episode", "learned")
    if not (name == "vae" and memory == "learned")
]


@pytest.mark.parametrize("name,arch,size,memory_mode", CASES)
def test_objective_shapes_finite_and_every_parameter_gets_a_gradient(name, arch, size, memory_mode):
    G, M, T, K = 2, 3, 2, 3
    model = tiny_model(name, arch, size, **({"memory": memory_mode} if name != "vae" else {}))
    memory, targets = episodes(G, M, T, size)
    obj = model.objective(Batch(memory, targets), K)
    assert obj.loss.shape == ()
    expected_terms = {"reconstruction", "kl_latent"} | ({"kl_address"} if name == "vma" else set())
    assert set(obj.terms) == expected_terms
    for field, t in [("bound", obj.bound), *obj.terms.items()]:
        assert t.shape == (G, T), f"{field}: {tuple(t.shape)}"
        assert torch.isfinite(t).all(), f"{field}: {t}"
    assert (obj.terms["kl_latent"] >= 0).all() and (obj.terms["reconstruction"] < 0).all()
    if name == "vma":
        kl_a = obj.terms["kl_address"]
        assert (kl_a >= -1e-6).all() and (kl_a <= math.log(model.learned_memory.size if memory_mode == "learned" else M) + 1e-5).all()
    assert_close(obj.loss, -obj.bound.mean(), atol=1e-4, rtol=1e-6, name="loss = −mean bound")
    obj.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}/{arch}/{memory_mode}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {pname}"
    modules = {n.split(".")[0] for n, _ in model.named_parameters()}
    for mod in modules:  # every module learns something (not all-zero gradients)
        total = sum(float(p.grad.abs().sum()) for n, p in model.named_parameters() if n.split(".")[0] == mod)
        assert total > 0, f"{name}/{arch}/{memory_mode}: all gradients of {mod} are zero"
    assert obj.metrics().keys() == {"loss", "bound", "nll_bound"} | expected_terms


@pytest.mark.parametrize("name", ["vma", "vae", "soft_attention"])
def test_sample_and_address_posterior(name):
    model = tiny_model(name, "conv", 28)
    memory, targets = episodes(2, 4, 3, 28)
    x = model.sample(memory, 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 5, 1, 28, 28) and (x >= 0).all() and (x <= 1).all()
    if name == "vma":
        lq = model.address_log_posterior(Batch(memory, targets))
        assert lq.shape == (2, 3, 4)
        assert_close(lq.logsumexp(-1), torch.zeros(2, 3), atol=1e-5, rtol=0, name="Σ_a q(a|x)")
    else:
        with pytest.raises(CapabilityError, match=f"the '{name}' family does not declare the 'address_posterior' capability"):
            model.address_log_posterior(Batch(memory, targets))


def test_chunked_log_mean_exp_is_exact_for_any_split():
    log_w = 50 * torch.randn(3, 4, 37, dtype=torch.float64)
    expected = torch.logsumexp(log_w, -1) - math.log(37)
    for chunk in (1, 5, 36, 37, 100):
        it = iter(torch.split(log_w, chunk, dim=-1))

        def draw(k):
            part = next(it)
            assert part.shape[-1] == k
            return part

        assert_close(chunked_log_mean_exp(draw, 37, chunk), expected, atol=1e-10, rtol=1e-12, name=f"chunk={chunk}")


def _estimates(fn, repeats: int, seed: int) -> torch.Tensor:
    return torch.stack([fn(torch.Generator().manual_seed(seed + r)) for r in range(repeats)])  # [R, G, T]


def _assert_agree(a: torch.Tensor, b: torch.Tensor, what: str, z_max: float = 5.0, atol: float = 0.05):
    """Means over repeats agree within z_max standard errors (plus atol for the IS bias)."""
    se = torch.sqrt(a.var(0) / a.shape[0] + b.var(0) / b.shape[0])
    diff = (a.mean(0) - b.mean(0)).abs()
    assert (diff <= z_max * se + atol).all(), f"{what}: |diff| {diff.tolist()} vs se {se.tolist()}"


@pytest.mark.parametrize("name", ["vma", "vae", "soft_attention"])
def test_log_likelihood_chunked_equals_unchunked(name):
    model = tiny_model(name, "mlp", 26)
    memory, targets = episodes(2, 3, 2, 26)
    K = 40
    chunked = _estimates(lambda g: model.log_likelihood(Batch(memory, targets), K, chunk=7, generator=g), 6, 0)
    whole = _estimates(lambda g: model.log_likelihood(Batch(memory, targets), K, chunk=K, generator=g), 6, 100)
    assert chunked.shape == (6, 2, 2) and torch.isfinite(chunked).all()
    _assert_agree(chunked, whole, f"{name}: chunk=7 vs chunk={K}")
    # and the bound is not looser than the K=1 objective bound on average (IWAE monotonicity)
    single = _estimates(lambda g: model.log_likelihood(Batch(memory, targets), 1, generator=g), 6, 200)
    assert chunked.mean() >= single.mean() - 0.5


def test_exact_address_agrees_with_sampled_addresses():
    model = tiny_model("vma", "mlp", 26)
    memory, targets = episodes(2, 3, 2, 26)
    # chunk=25 with S=10: address blocks of 2, then 1; chunk=7: one address, z in chunks of 7, 3
    exact = _estimates(lambda g: model.log_likelihood(Batch(memory, targets), 10, chunk=25, exact_address=True, generator=g), 6, 0)
    exact7 = _estimates(lambda g: model.log_likelihood(Batch(memory, targets), 10, chunk=7, exact_address=True, generator=g), 6, 50)
    sampled = _estimates(lambda g: model.log_likelihood(Batch(memory, targets), 30, chunk=16, generator=g), 6, 100)
    _assert_agree(exact, exact7, "exact_address chunk=25 vs chunk=7")
    _assert_agree(exact, sampled, "exact_address vs sampled addresses")


@pytest.mark.parametrize("name", ["vma", "soft_attention"])
def test_learned_memory_ignores_episode_memory(name):
    model = tiny_model(name, "mlp", 26, memory="learned")
    memory, targets = episodes(2, 3, 2, 26)
    other = 1 - memory
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.objective(Batch(memory, targets), 3, generator=g())
    b = model.objective(Batch(other, targets), 3, generator=g())
    c = model.objective(Batch(None, targets), 3, generator=g())
    for o in (b, c):
        assert torch.equal(a.loss, o.loss) and torch.equal(a.bound, o.bound)
    la = model.log_likelihood(Batch(memory, targets), 5, generator=g())
    lb = model.log_likelihood(Batch(other[:, :2], targets), 5, generator=g())  # even a different M
    assert torch.equal(la, lb)
    if name == "vma":
        assert model.address_log_posterior(Batch(other, targets)).shape == (2, 2, 5)  # learned_memory_size
    # and the episode-memory model does depend on the memory
    episodic = tiny_model(name, "mlp", 26)
    assert not torch.equal(episodic.objective(Batch(memory, targets), 3, generator=g()).loss,
                           episodic.objective(Batch(other, targets), 3, generator=g()).loss)


def test_vae_ignores_memory():
    model = tiny_model("vae", "mlp", 26)
    memory, targets = episodes(2, 3, 2, 26)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model.objective(Batch(memory, targets), 2, generator=g()).loss, model.objective(Batch(None, targets), 2, generator=g()).loss)
    assert not model.uses_memory and not model.supports(Capability.ADDRESS)


def test_flat_prior_has_no_prior_query_and_uniform_prior():
    model = tiny_model("vma", "mlp", 26, prior="flat")
    assert model.prior_query is None
    memory, targets = episodes(2, 3, 2, 26)
    mem = model.encode_memory(memory)
    assert_close(model.log_prior_all(mem, 2), torch.full((2, 3), -math.log(3)), atol=1e-6, rtol=0, name="log p(a)")
    learned = tiny_model("vma", "mlp", 26)
    with torch.no_grad():
        learned.prior_query.normal_()
    lp = learned.log_prior_all(learned.encode_memory(memory), 2)
    assert_close(lp.logsumexp(-1), torch.zeros(2), atol=1e-6, rtol=0, name="Σ_a p(a)")
    assert lp.std() > 0


def test_build_model_and_config_errors():
    assert isinstance(build_model(tiny_config("vma"), (1, 26, 26)), VMA)
    assert isinstance(build_model(tiny_config("vae"), (26, 26)), VAE)
    assert isinstance(build_model(tiny_config("soft_attention"), (28, 28)), SoftAttentionMemory)
    with pytest.raises(ConfigError, match=r"model.name='no_such_family' is not a registered model family"):
        family("no_such_family")
    with pytest.raises(ConfigError, match=r"model.name must be a family name \(a string\), got \[0, \[\]\] \(list\)"):
        family([0, []])  # what `--set model.name=[0,[]]` parses to (found by Hypothesis)
    with pytest.raises(ConfigError, match=r"model.channels must be the feature maps of all 6 conv layers.*\(32, 64\)"):
        VMAConfig(channels=(32, 64))
    with pytest.raises(ConfigError, match=r"model.z_dim must be an int >= 1, got 0"):
        VMAConfig(z_dim=0)
    with pytest.raises(ConfigError, match=r"model.match_dim must be an int in \[1, 256\].*got 512"):
        VMAConfig(match_dim=512)
    with pytest.raises(ConfigError, match=r"model: unknown key 'zdim' \(known: .*z_dim"):
        VMAConfig.from_dict({"zdim": 3})
    with pytest.raises(ConfigError, match=r"model: unknown key 'prior'"):
        VAEConfig.from_dict({"prior": "flat"})  # each family has only its own fields
    cfg = VAEConfig.from_dict({"name": "vae", "channels": [8, 8, 16, 16, 32, 32]})
    assert cfg.channels == (8, 8, 16, 16, 32, 32)
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["name"] == "vae"
    with pytest.raises(ValueError, match=r"3 channels"):
        build_model(tiny_config("vma"), (3, 26, 26))
    model = tiny_model("vma", "mlp", 26)
    memory, targets = episodes(2, 3, 2, 26)
    with pytest.raises(ValueError, match=r"targets must be \[G, N, 1, 26, 26\].*\(2, 2, 1, 28, 28\)"):
        model.objective(Batch(memory, torch.zeros(2, 2, 1, 28, 28)), 3)
    with pytest.raises(ValueError, match=r"num_samples must be an int >= 2"):
        model.objective(Batch(memory, targets), 1)
    with pytest.raises(ValueError, match=r"disagree on G"):
        model.objective(Batch(memory[:1], targets), 3)
