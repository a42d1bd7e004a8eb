"""Generative Matching Networks: the conformance suite, and the family's own claims — the one-pass
sequential likelihood equals item-by-item conditioning, the prefix restriction restricts, pseudo-inputs
make X = ∅ generate and their absence refuses it, bad configs are one-line errors naming the field."""
from __future__ import annotations

import pytest
import torch

from varmem.kernels import use_backend
from varmem.models import build_model
from varmem.models.base import Batch
from varmem.models.estimators import log_mean_exp
from varmem.models.families import gmn as gmn_module
from varmem.typed import ConfigError
from tests.assertions import assert_close
from tests.models.families.conformance import FamilyConformance, episode_batch
from tests.models.tiny import one_torch_thread  # noqa: F401  (autouse)

NETS = {"mlp_hidden": [16, 8], "channels": [4, 4, 8, 8, 8, 8], "hidden": 16, "z_dim": 4, "match_dim": 8, "read_dim": 8}
CASES = {
    "default": {**NETS, "architecture": "conv"},
    "no-pseudo-input": {**NETS, "architecture": "mlp", "pseudo_inputs": False},
    "no-attention": {**NETS, "architecture": "mlp", "attention": "none"},
    "matching-steps-3": {**NETS, "architecture": "mlp", "matching_steps": 3},
}
SIZE = 8


class TestGMN(FamilyConformance):
    family = "gmn"
    configs = {**CASES, "targets-training": {**NETS, "architecture": "mlp", "training": "targets", "pseudo_inputs": False}}


def model_of(case: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model({"name": "gmn", **CASES[case], **overrides}, (SIZE, SIZE))


def images(G: int, N: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(G, N, 1, SIZE, SIZE, generator=g) < 0.3).to(torch.float64)


# --- one pass over a sequence = conditioning item by item ------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_sequence_equals_item_by_item_conditioning(case):
    """log w, q(z|x, X_<n) and p(z|X_<n) of every position of one pass equal those of conditioning x_n on
    x_1..x_{n−1} as a memory, with the same z noise (float64, the reference ops)."""
    model = model_of(case).double()
    G, N, K = 2, 6, 3
    seq = images(G, N, seed=1)
    start = 1 - model.num_pseudo
    eps = torch.randn(G, N - start, K, model.config.z_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with use_backend("reference"):
        one_pass = model.sequence_weights(seq, eps)
        assert one_pass.log_w.shape == (G, N - start, K)
        for n in range(start, N):
            i = n - start
            item = model.conditional_weights(seq[:, :n], seq[:, n:n + 1], eps[:, i:i + 1])
            for name, a, b in (("log w", one_pass.log_w[:, i], item.log_w[:, 0]),
                               ("q mean", one_pass.q_z.mean[:, i], item.q_z.mean[:, 0]),
                               ("p std", one_pass.p_z.std[:, i], item.p_z.std[:, 0])):
                assert_close(a, b, atol=1e-10, rtol=1e-10, name=f"{case}: {name} at position {n + 1}")
    # the positions are not all alike: conditioning on a different prefix changes the value
    assert (one_pass.log_w[:, -1] - one_pass.log_w[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("case", ["default", "matching-steps-3"])
def test_one_pass_matches_item_by_item_with_the_triton_kernels(case):
    """The same equality in float32 through the Triton memory_read (the interpreter on CPU)."""
    from varmem.kernels.dispatch import interpret_mode

    if not torch.cuda.is_available() and not interpret_mode():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    model = model_of(case)
    G, N, K = 2, 5, 2
    seq = images(G, N, seed=3).float()
    eps = torch.randn(G, N, K, model.config.z_dim, generator=torch.Generator().manual_seed(4))
    with use_backend("triton"):
        one_pass = model.sequence_weights(seq, eps).log_w
        items = torch.cat([model.conditional_weights(seq[:, :n], seq[:, n:n + 1], eps[:, n:n + 1]).log_w for n in range(N)], 1)
    assert_close(one_pass, items, atol=1e-3, rtol=1e-5, name=f"{case}: one pass vs item by item (triton)")


@pytest.mark.parametrize("case", list(CASES))
def test_prefix_restriction_restricts(case):
    """Changing x_t leaves log w of positions < t and p(z | X_<n) of positions ≤ t unchanged (their reads
    never see x_t), and changes the positions after t."""
    model = model_of(case).double()
    G, N, K, t = 2, 6, 2, 3  # t: 0-based index of the changed image
    seq = images(G, N, seed=5)
    other = seq.clone()
    other[:, t] = 1 - other[:, t]
    start = 1 - model.num_pseudo
    eps = torch.randn(G, N - start, K, model.config.z_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with use_backend("reference"):
        a, b = model.sequence_weights(seq, eps), model.sequence_weights(other, eps)
    i = t - start  # the changed image's scored index
    assert torch.equal(a.log_w[:, :i], b.log_w[:, :i]), "a position before t saw x_t"
    assert torch.equal(a.p_z.mean[:, :i + 1], b.p_z.mean[:, :i + 1]), "p(z | X_<n) for n ≤ t saw x_t"
    assert torch.equal(a.q_z.mean[:, :i], b.q_z.mean[:, :i])
    later = (a.log_w[:, i + 1:] - b.log_w[:, i + 1:]).abs().amax(dim=(0, 2))  # [positions after t]
    assert (later > 1e-6).all(), f"positions after t did not see x_t: {later.tolist()}"
    assert (a.log_w[:, i] - b.log_w[:, i]).abs().max() > 1e-6  # x_t is the target of its own position


def test_reads_are_grouped_by_prefix_length(monkeypatch):
    """Every soft read goes through kernels.memory_read: a sequence costs one call per prefix length and
    read (generator; recognition with the prior), per matching step; targets given a memory, one per read."""
    calls = []
    real = gmn_module.memory_read

    def counting(query, keys, values, **kw):
        calls.append((tuple(query.shape), keys.shape[1]))
        return real(query, keys, values, **kw)

    monkeypatch.setattr(gmn_module, "memory_read", counting)
    model = model_of("matching-steps-3")  # S = 3 steps
    G, N, K = 2, 5, 2
    seq = images(G, N, seed=7).float()
    model.sequence_weights(seq, torch.randn(G, N, K, 4))
    assert len(calls) == 2 * N * 3
    assert sorted({size for _, size in calls}) == list(range(1, N + 1))  # x* plus each prefix
    calls.clear()
    batch = episode_batch(SIZE)
    model.log_likelihood(batch, 4, chunk=4)
    assert len(calls) == 2 * 3 and {size for _, size in calls} == {1 + batch.memory.shape[1]}


# --- the objective's sequence ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["default", "no-pseudo-input"])
def test_sequence_objective_reports_each_target_at_its_position(case):
    """In sequence training the [G, T] bound of target t is log p(x_t | the images before it in the drawn
    order) — recomputed here item by item from the same generator; the loss is the mean over positions."""
    model = model_of(case).double()
    batch = episode_batch(SIZE)
    batch = Batch(batch.memory.double(), batch.targets.double(), batch.memory_labels, batch.target_labels)
    G, M, T, K = batch.targets.shape[0], batch.memory.shape[1], batch.targets.shape[1], 3
    with use_backend("reference"):
        obj = model.objective(batch, K, generator=torch.Generator().manual_seed(11))
        gen = torch.Generator().manual_seed(11)
        order = model.sequence_order(M, T, G, gen)
        start = 1 - model.num_pseudo
        eps = torch.randn(G, M + T - start, K, model.config.z_dim, generator=gen, dtype=torch.float64)
        everything = torch.cat([batch.memory, batch.targets], 1)
        seq = everything.gather(1, order[:, :, None, None, None].expand_as(everything))
        assert_close(obj.loss, -log_mean_exp(model.sequence_weights(seq, eps).log_w).mean(), atol=1e-9, rtol=0, name="loss")
        position = order.argsort(1)
        for g in range(G):
            for t in range(T):
                n = int(position[g, M + t])
                assert n >= start, "a target was put where nothing conditions it"
                w = model.conditional_weights(seq[g:g + 1, :n], batch.targets[g:g + 1, t:t + 1], eps[g:g + 1, n - start:n - start + 1])
                assert_close(obj.bound[g, t], log_mean_exp(w.log_w)[0, 0], atol=1e-9, rtol=0, name=f"bound of target {t}")


def test_sequence_order_is_a_permutation_and_without_pseudo_inputs_starts_with_memory():
    M, T, G = 3, 4, 500
    for case, first_is_memory in (("default", None), ("no-pseudo-input", True)):
        order = model_of(case).sequence_order(M, T, G, torch.Generator().manual_seed(0))
        assert torch.equal(order.sort(1).values, torch.arange(M + T).expand(G, -1))
        firsts = order[:, 0]
        if first_is_memory:
            assert (firsts < M).all()
            assert set(firsts.tolist()) == set(range(M))  # each memory entry can come first
        else:
            assert (firsts >= M).float().mean() > 0.4  # targets come first as often as their share (4/7)


def test_targets_training_objective_is_the_likelihood_bound_with_the_same_noise():
    torch.manual_seed(0)
    model = build_model({"name": "gmn", **NETS, "architecture": "mlp", "training": "targets"}, (SIZE, SIZE))
    batch = episode_batch(SIZE)
    obj = model.objective(batch, 5, generator=torch.Generator().manual_seed(3))
    ll = model.log_likelihood(batch, 5, chunk=5, generator=torch.Generator().manual_seed(3))
    assert_close(obj.bound, ll, atol=1e-5, rtol=0, name="targets objective vs log_likelihood")
    assert_close(obj.loss, -ll.mean(), atol=1e-5, rtol=0, name="loss")


# --- pseudo-inputs -----------------------------------------------------------------------------------


def test_pseudo_inputs_give_a_finite_zero_shot_bound_and_samples():
    model = model_of("default")
    assert model.min_memory_size == 0
    batch = episode_batch(SIZE)
    empty = Batch(batch.memory[:, :0], batch.targets)
    ll = model.log_likelihood(empty, 6, chunk=3, generator=torch.Generator().manual_seed(0))
    assert ll.shape == batch.targets.shape[:2] and torch.isfinite(ll).all()
    assert torch.isfinite(model.objective(empty, 3).bound).all()
    for memory in (None, batch.memory[:, :0]):
        s = model.sample(memory, 2, generator=torch.Generator().manual_seed(0))
        assert s.shape[1:] == (2, 1, SIZE, SIZE) and torch.isfinite(s).all()
    # the 0-shot bound is the pseudo-input's: change ψ* and it changes
    with torch.no_grad():
        model.gen_pseudo_value.add_(1.0)
    again = model.log_likelihood(empty, 6, chunk=3, generator=torch.Generator().manual_seed(0))
    assert (again - ll).abs().max() > 1e-4


def test_without_pseudo_inputs_an_empty_set_is_refused_with_one_clear_line():
    model = model_of("no-pseudo-input")
    assert model.min_memory_size == 1
    batch = episode_batch(SIZE)
    empty = Batch(batch.memory[:, :0], batch.targets)
    calls = {
        "log_likelihood": lambda: model.log_likelihood(empty, 2),
        "objective": lambda: model.objective(empty, 2),
        "objective (memory None)": lambda: model.objective(Batch(None, batch.targets), 2),
        "sample": lambda: model.sample(None, 2),
        "embed_given": lambda: model.embed_given(batch.memory[:, :0], batch.targets),
        "sequence of one": lambda: model.sequence_weights(batch.targets[:, :1], torch.zeros(2, 0, 1, 4)),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"conditioning set X is empty and model\.pseudo_inputs is false") as info:
            call()
        assert "\n" not in str(info.value), name
    assert torch.isfinite(model.log_likelihood(Batch(batch.memory[:, :1], batch.targets), 2)).all()  # one entry is enough


# --- embedding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["default", "no-pseudo-input"])
def test_embedding_is_set_free(case):
    """embed(images) is q(z | x, X = ∅)'s mean (x* alone), or q(z | x, {x})'s without pseudo-inputs: one
    image's features do not depend on the other images embedded with it."""
    model = model_of(case)
    x = images(2, 3, seed=9).float()
    features = model.embed(x)
    assert features.shape == (2, 3, model.config.z_dim)
    assert_close(model.embed(x[1, 2]), features[1, 2], atol=1e-6, rtol=0, name="one image alone")
    if model.config.pseudo_inputs:
        given = model.embed_given(None, x)  # X = ∅: x* alone
    else:
        given = model.embed_given(x.reshape(6, 1, 1, SIZE, SIZE), x.reshape(6, 1, 1, SIZE, SIZE)).view(2, 3, -1)  # X = {x}
    assert_close(given, features, atol=1e-6, rtol=0, name="embed_given with the set-free set")
    # a set does change q(z | x, X)
    assert (model.embed_given(x[:1, :2], x[:1, 2:]) - features[:1, 2:]).abs().max() > 1e-5


# --- configs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, field", [
    ({"matching_steps": 0}, "matching_steps"),
    ({"matching_steps": 2, "attention": "none"}, "matching_steps"),
    ({"attention": "soft"}, "attention"),
    ({"training": "pairs"}, "training"),
    ({"read_dim": 0}, "read_dim"),
    ({"match_dim": 1000}, "match_dim"),
    ({"similarity": "l2"}, "similarity"),
    ({"pseudo_inputs": "yes"}, "pseudo_inputs"),
])
def test_bad_configs_are_one_line_errors_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"model\.{field} must be") as info:
        build_model({"name": "gmn", **NETS, **overrides}, (SIZE, SIZE))
    assert "\n" not in str(info.value)
