"""The sequential model (Rezende et al. 2016) and DRAW through the conformance suite, and what is its own:
config errors, the empty memory, the context rule, the per-step KL terms, the bounds, the kernels."""
from __future__ import annotations

import math

import pytest
import torch

from varmem.kernels import gaussian_read, use_backend
from varmem.kernels.dispatch import interpret_mode
from varmem.models.base import Batch
from varmem.models.eval.capabilities import reads_episode_memory
from varmem.models.families.sequential import SequentialConfig, kl_groups
from varmem.models.registry import build_model
from varmem.typed import ConfigError
from tests.assertions import assert_close
from tests.models.families.conformance import FamilyConformance, episode_batch

SIZE = 10  # not a power of two: the kernels' masked tiles are exercised
TINY = {"steps": 3, "z_dim": 2, "lstm_units": 12, "write_size": 4, "read_size": 3}
CASES = {
    "rezende-additive": {**TINY},  # hidden canvas of 4 channels, shared LSTM, context
    "rezende-conv-gru": {**TINY, "canvas_update": "conv_gru", "canvas_channels": 3, "context_dropout": 0.5},
    "draw": {**TINY, "hidden_canvas": False, "canvas_channels": 1, "inference": "lstm", "read_error": True,
             "context": False},
}


class TestSequential(FamilyConformance):
    family = "sequential"
    configs = CASES
    image_size = SIZE
    num_samples = 2  # K > 1 (K one-sample ELBOs averaged); fewer rows for the Triton interpreter than the default 3


def build(case: str = "rezende-additive", seed: int = 0, size: int = SIZE, **overrides):
    torch.manual_seed(seed)
    return build_model({"name": "sequential", **CASES[case], **overrides}, (size, size))


def batch(seed: int = 0, size: int = SIZE) -> Batch:
    return episode_batch(size, seed)


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, r"model\.steps must be an int >= 1 \(T"),
    ("canvas_channels", 0, r"model\.canvas_channels must be an int >= 1"),
    ("z_dim", 0, r"model\.z_dim must be an int >= 1"),
    ("write_size", 1, r"model\.write_size must be an int >= 2"),
    ("read_size", 1, r"model\.read_size must be an int >= 2"),
    ("gru_kernel", 2, r"model\.gru_kernel must be an odd int >= 1"),
    ("context_dropout", 1.0, r"model\.context_dropout must be in \[0, 1\)"),
    ("kl_terms", 0, r"model\.kl_terms must be an int >= 1"),
    ("canvas_update", "lstm", r"model\.canvas_update must be one of 'additive', 'conv_gru'"),
    ("inference", "none", r"model\.inference must be one of 'shared', 'lstm'"),
])
def test_bad_config_is_a_one_line_error_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        SequentialConfig.from_dict({**CASES["rezende-additive"], field: value})
    assert "\n" not in str(err.value)


def test_inconsistent_fields_are_refused():
    with pytest.raises(ConfigError, match=r"model\.canvas_channels must be 1 when hidden_canvas is false"):
        SequentialConfig.from_dict({"hidden_canvas": False, "canvas_channels": 4})
    with pytest.raises(ConfigError, match=r"model\.context_dropout must be 0 when context is false"):
        SequentialConfig.from_dict({"context": False, "context_dropout": 0.1})


@pytest.mark.parametrize("field", ["write_size", "read_size"])
def test_a_patch_larger_than_the_image_is_refused_at_build(field):
    with pytest.raises(ConfigError, match=rf"model\.{field}=12 is larger than the 10x10 image") as err:
        build(**{field: 12})
    assert "\n" not in str(err.value)
    build(**{field: SIZE})  # as large as the image is fine


def test_kl_group_names_cover_every_step_once():
    assert [n for n, _, _ in kl_groups(3, 8)] == ["kl_step_1", "kl_step_2", "kl_step_3"]
    groups = kl_groups(64, 8)
    assert [n for n, _, _ in groups][:2] == ["kl_steps_01_08", "kl_steps_09_16"] and groups[-1][0] == "kl_steps_57_64"
    for T, n in [(10, 4), (7, 3), (64, 8), (80, 8), (5, 5), (1, 8)]:
        steps = [s for _, first, last in kl_groups(T, n) for s in range(first, last)]
        assert steps == list(range(T)), (T, n)
        sizes = [last - first for _, first, last in kl_groups(T, n)]
        assert max(sizes) - min(sizes) <= 1


# --- objective ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_per_step_kl_terms_sum_to_the_total_and_the_bound_is_reconstruction_minus_kl(case):
    model = build(case, steps=7, kl_terms=3)
    obj = model.objective(batch(), 2)
    names = [n for n, _, _ in kl_groups(7, 3)]
    assert list(obj.terms) == ["reconstruction", "kl_latent", *names]
    total = sum(obj.terms[n] for n in names)
    assert_close(total, obj.terms["kl_latent"], atol=1e-5, rtol=1e-6, name="Σ per-step KL vs kl_latent")
    assert_close(obj.terms["reconstruction"] - obj.terms["kl_latent"], obj.bound, atol=1e-4, rtol=1e-6,
                 name="reconstruction − KL vs the ELBO")
    assert (obj.terms["kl_latent"] > 0).all()
    assert_close(obj.loss, -obj.bound.mean(), atol=1e-5, rtol=1e-6, name="loss = −mean ELBO")


def _repeated(n: int, seed: int = 3) -> Batch:
    """One target (and its memory) repeated n times as the targets of one episode: n independent draws."""
    b = batch(seed)
    return Batch(b.memory[:1], b.targets[:1, :1].expand(1, n, 1, SIZE, SIZE).clone())


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double().flatten()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


@pytest.mark.parametrize("case", ["rezende-additive", "draw"])
def test_importance_weighted_bound_k1_is_the_elbo_in_expectation_and_grows_with_k(case):
    model = build(case)
    model.eval()
    b = _repeated(3000)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo, elbo_se = _mean_se(model.objective(b, 1, generator=gen).bound)  # analytic KL
    k1, k1_se = _mean_se(model.log_likelihood(b, 1, generator=gen))  # sampled log w, K = 1
    assert abs(k1 - elbo) < 4 * math.hypot(k1_se, elbo_se), (k1, elbo, k1_se, elbo_se)
    small = Batch(b.memory, b.targets[:, :200])
    k50, k50_se = _mean_se(model.log_likelihood(small, 50, chunk=20, generator=gen))
    # K = 50 is a tighter bound: above the ELBO by more than the noise (an untrained model's weights vary a lot)
    assert k50 > elbo + 4 * math.hypot(k50_se, elbo_se), (k50, elbo)


def test_empty_memory_is_the_unconditional_model():
    model = build("rezende-additive")
    model.eval()
    assert model.min_memory_size == 0 and reads_episode_memory(model)
    b = batch()
    empty = Batch(b.memory[:, :0], b.targets)
    none = Batch(None, b.targets)
    ll_empty = model.log_likelihood(empty, 4, generator=torch.Generator().manual_seed(1))
    ll_none = model.log_likelihood(none, 4, generator=torch.Generator().manual_seed(1))
    ll_full = model.log_likelihood(b, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ll_empty, ll_none)
    assert not torch.allclose(ll_empty, ll_full)  # the context changes the density
    s_empty = model.sample(b.memory[:1, :0], 3, generator=torch.Generator().manual_seed(2))
    s_none = model.sample(None, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s_empty, s_none) and s_none.shape == (1, 3, 1, SIZE, SIZE)
    obj = model.objective(empty, 2)
    assert torch.isfinite(obj.loss)


def test_dropped_context_is_the_empty_memory():
    """context_dropout: a dropped row sees exactly what an empty memory gives (v = 0, e = 0)."""
    model = build("rezende-additive", context_dropout=0.999999)  # every row dropped
    b = batch()
    rows = b.targets.shape[0] * b.targets.shape[1] * 2  # G·T·K
    g1 = torch.Generator().manual_seed(6)
    torch.rand(rows, 1, generator=g1)  # the dropout's draws, which an empty memory does not make
    model.eval()
    empty = model.objective(Batch(b.memory[:, :0], b.targets), 2, generator=g1)
    model.train()
    dropped = model.objective(b, 2, generator=torch.Generator().manual_seed(6))
    assert_close(dropped.bound, empty.bound, atol=1e-5, rtol=1e-6, name="all rows dropped vs empty memory")
    model.eval()  # no dropout outside training
    kept = model.objective(b, 2, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(kept.bound, empty.bound, atol=1e-3)


def test_draw_ignores_memory():
    model = build("draw")
    model.eval()
    assert not reads_episode_memory(model) and model.min_memory_size == 0
    b = batch()
    a = model.log_likelihood(b, 3, generator=torch.Generator().manual_seed(0))
    c = model.log_likelihood(Batch(None, b.targets), 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, c)


# --- the context rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["rezende-additive", "rezende-conv-gru"])
def test_context_is_invariant_to_the_order_of_the_exemplars(case):
    model = build(case)
    model.eval()
    b = batch()
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    shuffled = Batch(b.memory[:, perm], b.targets)
    a = model.objective(b, 2, generator=torch.Generator().manual_seed(0))
    c = model.objective(shuffled, 2, generator=torch.Generator().manual_seed(0))
    assert_close(c.bound, a.bound, atol=1e-4, rtol=1e-6, name="ELBO, memory permuted vs not")
    # and the context does matter: another memory changes the bound
    other = Batch(batch(seed=9).memory, b.targets)
    d = model.objective(other, 2, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(d.bound, a.bound, atol=1e-3)


def test_pooled_context_read_is_the_mean_of_the_per_exemplar_reads():
    model = build()
    memory = batch().memory  # [G, M, 1, H, W]
    G, M = memory.shape[:2]
    params = torch.randn(G, 5) * torch.tensor([0.5, 0.5, 0.3, 0.3, 0.3])
    pooled = gaussian_read(model.pool_context(memory), params, 3)  # [G, 1, 3, 3]
    each = torch.stack([gaussian_read(memory[:, m], params, 3) for m in range(M)], dim=1)  # [G, M, 1, 3, 3]
    assert_close(pooled, each.mean(1), atol=1e-6, rtol=1e-5, name="read(mean exemplar) vs mean of reads")


# --- training and the kernels ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_a_few_steps_raise_the_elbo_on_a_fixed_batch(case):
    model, b = build(case), batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    bounds = []
    for step in range(25):
        obj = model.objective(b, 1, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        obj.loss.backward()
        opt.step()
        bounds.append(float(obj.bound.mean()))
    assert sum(bounds[-5:]) / 5 > sum(bounds[:5]) / 5 + 5.0, bounds


def _record_dispatch(monkeypatch) -> dict[str, list[str]]:
    import varmem.kernels.gaussian_attention as ga

    served: dict[str, list[str]] = {}
    choose = ga.choose

    def counting(op, tensors, reasons):
        backend = choose(op, tensors, reasons)
        served.setdefault(op, []).append(backend)
        return backend

    monkeypatch.setattr(ga, "choose", counting)
    return served


@pytest.mark.skipif(not torch.cuda.is_available() and not interpret_mode(),
                    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)")
def test_kernels_on_and_reference_at_the_paper_shapes(monkeypatch):
    """3 Adam steps at 26×26 with 12×12 patches and a 4-channel hidden canvas (the conv GRU), every read and
    write through the Triton kernels (the interpreter on CPU) vs the reference: the same losses."""
    served = _record_dispatch(monkeypatch)
    b = episode_batch(26, 0)
    b = Batch(b.memory[:1, :2], b.targets[:1, :2])

    def losses(backend: str) -> torch.Tensor:
        model = build("rezende-conv-gru", size=26, canvas_channels=4, write_size=12, read_size=12,
                      context_dropout=0.0, lstm_units=16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        out = []
        with use_backend(backend):
            for step in range(3):
                obj = model.objective(b, 1, generator=torch.Generator().manual_seed(step))
                opt.zero_grad()
                obj.loss.backward()
                opt.step()
                out.append(torch.stack([obj.loss.detach(), *(t.detach().mean() for t in obj.terms.values())]))
        return torch.stack(out)

    ref = losses("reference")
    assert set(served["gaussian_read"]) == {"reference"} and set(served["gaussian_write"]) == {"reference"}
    served.clear()
    tri = losses("triton")
    # 3 steps × T = 3 steps: target read, context read and write each step
    assert served["gaussian_read"].count("triton") == 3 * 3 * 2 and served["gaussian_write"].count("triton") == 3 * 3
    assert_close(tri, ref, atol=1e-4, rtol=1e-5, name="[loss, terms] per step, triton vs reference")
    assert not torch.equal(ref[0], ref[-1])


def test_conformance_cases_run_their_attention_through_the_kernels(monkeypatch):
    """The conformance suite's kernels-on test is only a test of the Gaussian kernels if the model calls them."""
    served = _record_dispatch(monkeypatch)
    for case in CASES:
        build(case).objective(batch(), 2).loss.backward()
    assert len(served["gaussian_read"]) == 3 * 2 + 3 * 2 + 3 * 1  # T = 3 × (context + target read) twice, target read (draw)
    assert len(served["gaussian_write"]) == 3 * 3


def test_attention_trace_ends_with_the_model_output():
    model = build("rezende-conv-gru")
    model.eval()
    b = batch()
    targets, memory = b.targets[0], b.memory[0, :1].unsqueeze(1).expand(3, 1, 1, SIZE, SIZE)
    trace = model.attention_trace(targets, memory, generator=torch.Generator().manual_seed(0))
    assert trace.read.shape == trace.write.shape == trace.context.shape == (3, 3, 5)
    assert trace.canvas.shape == (3, 3, 1, SIZE, SIZE) and (trace.read_size, trace.write_size) == (3, 4)
    out = model.unroll(targets, memory[:, 0], generator=torch.Generator().manual_seed(0))
    assert_close(trace.canvas[:, -1], torch.sigmoid(out.logits), atol=1e-6, rtol=1e-6, name="last canvas vs σ(f_o(c_T))")
    none = model.attention_trace(targets, None)
    assert none.context is None and none.context_image is None
