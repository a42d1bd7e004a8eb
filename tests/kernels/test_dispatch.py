"""Backend selection: VARMEM_KERNELS, use_backend, auto on CPU, and the refusal message."""
from __future__ import annotations

import importlib

import pytest
import torch

import varmem.kernels.dispatch as dispatch
from varmem.kernels import BackendUnavailable, gaussian_read, use_backend, vimco
from varmem.kernels.dispatch import choose, requested_backend

# ``varmem.kernels.vimco`` is the function (the package re-exports it), so fetch the modules by name.
vimco_module = importlib.import_module("varmem.kernels.vimco")
gaussian_attention = importlib.import_module("varmem.kernels.gaussian_attention")

ALWAYS = {"triton": lambda: None, "reference": lambda: None}


class _FakeCuda:
    """Stands in for a CUDA tensor in ``choose`` (which only asks ``is_cuda``)."""

    is_cuda = True


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("VARMEM_KERNELS", raising=False)


@pytest.mark.parametrize("value,expected", [("triton", "triton"), ("reference", "reference"), ("auto", "auto"),
                                            (" Reference ", "reference"), ("", "auto")])
def test_env_var_selects_backend(monkeypatch, value, expected):
    monkeypatch.setenv("VARMEM_KERNELS", value)
    assert requested_backend() == expected


def test_default_is_auto():
    assert requested_backend() == "auto"


def test_context_manager_takes_priority_over_env(monkeypatch):
    monkeypatch.setenv("VARMEM_KERNELS", "reference")
    with use_backend("triton"):
        assert requested_backend() == "triton"
        assert choose("op", [torch.zeros(1)], ALWAYS) == "triton"
        with use_backend("auto"):
            assert requested_backend() == "auto"
        assert requested_backend() == "triton"
    assert requested_backend() == "reference"
    assert choose("op", [torch.zeros(1)], ALWAYS) == "reference"


def test_invalid_env_value_raises(monkeypatch):
    monkeypatch.setenv("VARMEM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="VARMEM_KERNELS='cuda'"):
        requested_backend()
    with pytest.raises(ValueError, match="VARMEM_KERNELS"):
        vimco(torch.randn(2, 3))


def test_invalid_context_value_raises():
    with pytest.raises(ValueError, match="'fast'"):
        with use_backend("fast"):
            pass


def test_auto_takes_reference_for_cpu_tensors(monkeypatch):
    # Even in interpreter mode: the interpreter is for tests, reached only by forcing triton.
    monkeypatch.setattr(dispatch, "interpret_mode", lambda: True)
    assert choose("op", [torch.zeros(1)], ALWAYS) == "reference"

    def no_triton(*args, **kwargs):
        raise AssertionError("the Triton path was taken for CPU tensors under auto")

    monkeypatch.setattr(vimco_module.Vimco, "apply", no_triton)
    monkeypatch.setattr(gaussian_attention.GaussianRead, "apply", no_triton)
    vimco(torch.randn(3, 4))
    gaussian_read(torch.randn(2, 1, 8, 8), torch.zeros(2, 5), 3)


def test_auto_prefers_triton_on_cuda_and_falls_back():
    assert choose("op", [_FakeCuda()], ALWAYS) == "triton"
    refusing = {"triton": lambda: "K too large", "reference": lambda: None}
    assert choose("op", [_FakeCuda()], refusing) == "reference"


def test_forced_triton_without_interpreter_names_every_backend(monkeypatch):
    monkeypatch.setattr(dispatch, "interpret_mode", lambda: False)
    with use_backend("triton"), pytest.raises(BackendUnavailable) as info:
        vimco(torch.randn(3, 4))
    msg = str(info.value)
    assert "vimco" in msg and "requested: triton" in msg
    assert "- triton:" in msg and "Triton needs CUDA tensors" in msg
    assert "- reference:" in msg and "'triton' was requested" in msg
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="gaussian_read") as info:
        gaussian_read(torch.randn(2, 1, 8, 8), torch.zeros(2, 5), 3)
    assert "- triton:" in str(info.value) and "- reference:" in str(info.value)


def test_forced_triton_refuses_mixed_dtypes():
    if not (torch.cuda.is_available() or dispatch.interpret_mode()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 1, 8, 8, device=device)
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="mixed dtypes"):
        gaussian_read(x, torch.zeros(2, 5, dtype=torch.float64, device=device), 3)
    # The reference serves the same call.
    with use_backend("reference"):
        assert gaussian_read(x, torch.zeros(2, 5, dtype=torch.float64, device=device), 3).dtype == torch.float32


def test_forced_reference_serves_any_device():
    with use_backend("reference"):
        out = vimco(torch.randn(3, 4))
    assert out.bound.shape == (3,)


@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True), (torch.float16, False),
                                        (torch.float64, False)])
@pytest.mark.parametrize("d,dv", [(64, 0), (128, 0), (64, 64), (128, 128)])
@pytest.mark.parametrize("M", [32, 10_000, 1_000_000])
def test_gpu_plan_sample_tile_walks_splits_and_fma_reads_use_8_warps(monkeypatch, dtype, tf32, d, dv, M):
    """make_plan for a GPU (132 SMs, as the sm_90 table): in the FMA path (float32 without TF32, float64) the
    sampling kernel's key tile is at most FMA_SAMPLE_MAX_M entries and memory_read's launches use 8 warps (both
    chosen from ahead-of-time compiles, kernels/RESOURCES.md); the sampling tile divides the forward's tile and
    so every split it walks; tensor-core dtypes keep the forward's tile."""
    ma = importlib.import_module("varmem.kernels.memory_addressing")
    monkeypatch.setattr(ma, "_num_sms", lambda device: 132)
    plan = ma.make_plan(1, 32, M, d, dtype, torch.device("cuda"), tf32=tf32, dv=dv)
    fma = dtype == torch.float64 or (dtype == torch.float32 and not tf32)
    assert plan.block_m % plan.sample_block_m == 0 and plan.split_size % plan.sample_block_m == 0
    assert plan.sample_block_m == (min(plan.block_m, ma.FMA_SAMPLE_MAX_M) if fma else plan.block_m)
    if fma and dv:
        assert plan.num_warps == 8
    with ma.launch_config(block_m=64):  # an override forces one tile for every kernel
        forced = ma.make_plan(1, 32, M, d, dtype, torch.device("cuda"), tf32=tf32, dv=dv)
    assert forced.sample_block_m == forced.block_m == 64


@pytest.mark.skipif(not dispatch.interpret_mode(), reason="needs TRITON_INTERPRET=1 (set by tests/conftest.py)")
@pytest.mark.parametrize("B,M,d", [(64, 300, 128), (40, 150, 64)])
def test_gpu_plans_compute_the_reference_in_the_interpreter(monkeypatch, B, M, d):
    """The interpreter normally gets one tile for every kernel; here make_plan builds the GPU plan (separate
    dkeys, sampling and query tiles, 8-warp reads: what only a GPU would run) and the kernels run it in the
    interpreter: the posterior, its KL, log q of the sampled entries and every gradient equal the float64
    reference, and memory_read too."""
    from varmem.kernels import memory_addressing, memory_read
    from varmem.kernels.memory_addressing import similarity_logits

    ma = importlib.import_module("varmem.kernels.memory_addressing")
    monkeypatch.setattr(ma, "_num_sms", lambda device: 132)
    gpu_plan = ma.make_plan
    monkeypatch.setattr(ma, "make_plan", lambda *a, **k: _gpu_plan(gpu_plan, monkeypatch, ma, *a, **k))
    mr = importlib.import_module("varmem.kernels.memory_read")
    monkeypatch.setattr(mr, "make_plan", ma.make_plan)
    g = torch.Generator().manual_seed(B + M + d)
    q, k, ep, v = (torch.randn(*s, generator=g) for s in ((B, d), (M, d), (d,), (M, 32)))
    plan = ma.make_plan(1, B, M, d, torch.float32, torch.device("cpu"))
    assert (plan.dk_block_m, plan.sample_block_m) != (plan.block_m, plan.block_m)  # really a different tiling

    def run(backend, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, ep, v)]
        with use_backend(backend):
            out = memory_addressing(leaves[0], leaves[1], prior_query=leaves[2], num_samples=4)
            read = memory_read(leaves[0], leaves[1], leaves[3])
        (out.kl.sum() + out.log_normalizer.sum() + (read * read).sum()).backward()
        return out, read, [t.grad for t in leaves]

    out, read, grads = run("triton", torch.float32)
    ref, ref_read, ref_grads = run("reference", torch.float64)
    torch.testing.assert_close(out.kl.double(), ref.kl, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.log_normalizer.double(), ref.log_normalizer, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(read.double(), ref_read, atol=1e-4, rtol=1e-4)
    for name, got, want in zip(("query", "keys", "prior_query", "values"), grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=1e-3, msg=lambda m, n=name: f"d{n}: {m}")
    log_q = torch.log_softmax(similarity_logits(q.double()[None], k.double()[None], "normalized_dot")[0], -1)
    assert bool(((out.addresses >= 0) & (out.addresses < M)).all())
    torch.testing.assert_close(out.log_q.double(), log_q.gather(1, out.addresses.long()), atol=1e-4, rtol=1e-5)


def _gpu_plan(make_plan, monkeypatch, ma, *args, **kwargs):
    """make_plan as on a GPU: interpret_mode() False while the plan is made (the kernels still interpret)."""
    with monkeypatch.context() as m:
        m.setattr(ma, "interpret_mode", lambda: False)
        return make_plan(*args, **kwargs)
