"""Kernels on vs reference ops: the same seed gives the same losses over a few Adam steps.

VMA (memory_addressing + vimco_surrogate) and the soft-attention baseline (memory_read) train
for 3 steps with ``varmem.kernels.use_backend("triton")`` (the Triton interpreter on CPU, CUDA on a
GPU) and with ``use_backend("reference")``; losses and first-step gradients must agree within
float32 tolerance.

With one split of M (small M) the Triton sampler consumes the RNG exactly as the reference does
(one uniform per sample, no split draw), so both backends invert the same uniforms through the
same CDF and sample the same addresses: the test checks that torch.multinomial is never called.
"""
from __future__ import annotations

import pytest
import torch

from varmem.models.base import Batch

from varmem.kernels import use_backend
from varmem.kernels.dispatch import interpret_mode
from tests.assertions import assert_close
from tests.models.tiny import episodes, tiny_model

STEPS = 3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _no_multinomial(*args, **kwargs):
    raise AssertionError("the single-split sampler must not draw a split with torch.multinomial")


def train(name: str, backend: str, memory_mode: str, monkeypatch):
    model = tiny_model(name, "mlp", 8, seed=0, memory=memory_mode, learned_memory_size=6).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    memory, targets = (t.to(DEVICE) for t in episodes(2, 5, 3, 8, seed=1))
    losses, first_grads = [], None
    with monkeypatch.context() as m, use_backend(backend):
        if backend == "triton":
            m.setattr(torch, "multinomial", _no_multinomial)
        for step in range(STEPS):
            torch.manual_seed(100 + step)  # addresses and z noise from the global RNG
            obj = model.objective(Batch(memory, targets), 3)
            opt.zero_grad()
            obj.loss.backward()
            if first_grads is None:
                first_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            opt.step()
            losses.append(torch.stack([obj.loss.detach(), *(t.mean() for t in obj.terms.values())]))
    return torch.stack(losses).cpu(), {n: g.cpu() for n, g in first_grads.items()}


@pytest.mark.skipif(
    not torch.cuda.is_available() and not interpret_mode(), reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)"
)
@pytest.mark.parametrize("name,memory_mode", [("vma", "episode"), ("vma", "learned"), ("soft_attention", "episode")])
def test_same_seed_same_losses_with_kernels_and_reference(name, memory_mode, monkeypatch):
    ref_losses, ref_grads = train(name, "reference", memory_mode, monkeypatch)
    tri_losses, tri_grads = train(name, "triton", memory_mode, monkeypatch)
    print(f"{name} ({memory_mode} memory): losses per step {ref_losses[:, 0].tolist()}; max |triton − reference| "
          f"of [loss, KL(a), KL(z)] over {STEPS} steps = {(tri_losses - ref_losses).abs().max():.2e}")
    assert_close(tri_losses, ref_losses, atol=1e-4, rtol=1e-5, name=f"{name} [loss, every objective term] per step")
    for n in ref_grads:
        assert_close(tri_grads[n], ref_grads[n], atol=1e-4, rtol=1e-3, name=f"{name} first-step grad {n}")
    assert not torch.equal(ref_losses[0], ref_losses[-1])  # the steps did change the model
