"""Kernels on vs reference ops: the same seed gives the same losses over a few Adam steps.

VMA (memory_addressing + vimco_surrogate) and the soft-attention baseline (memory_read) train
for 3 steps with ``kernels.use_backend("triton")`` (the Triton interpreter on CPU, CUDA on a
GPU) and with ``use_backend("reference")``; losses and first-step gradients must agree within
float32 tolerance.

One difference is by design: the two backends draw addresses with different uses of the RNG
(the Triton sampler first draws a split of M by ``torch.multinomial``, then a uniform per
sample; the reference draws the uniform only). With one split (small M) the split draw is
certain, so the test replaces it by its only possible value without consuming the RNG; both
backends then invert the same uniforms through the same CDF and sample the same addresses.
"""
from __future__ import annotations

import pytest
import torch

from kernels import use_backend
from kernels.dispatch import interpret_mode
from tests.assertions import assert_close
from tests.models.tiny import episodes, tiny_model

STEPS = 3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_multinomial = torch.multinomial


def _single_split_multinomial(probs, num_samples, replacement=False, *, generator=None, out=None):
    if probs.dim() == 2 and probs.shape[1] == 1:  # the split draw with one split: always split 0
        return torch.zeros(probs.shape[0], num_samples, dtype=torch.int64, device=probs.device)
    raise AssertionError(f"test expects one split of M, got multinomial over {tuple(probs.shape)}")


def train(name: str, backend: str, memory_mode: str, monkeypatch):
    model = tiny_model(name, "mlp", 8, seed=0, memory=memory_mode, learned_memory_size=6).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    memory, targets = (t.to(DEVICE) for t in episodes(2, 5, 3, 8, seed=1))
    losses, first_grads = [], None
    with monkeypatch.context() as m, use_backend(backend):
        if backend == "triton":
            m.setattr(torch, "multinomial", _single_split_multinomial)
        for step in range(STEPS):
            torch.manual_seed(100 + step)  # addresses and z noise from the global RNG
            obj = model.objective(memory, targets, 3)
            opt.zero_grad()
            obj.loss.backward()
            if first_grads is None:
                first_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            opt.step()
            losses.append(torch.stack([obj.loss.detach(), obj.kl_address.mean(), obj.kl_latent.mean()]))
    return torch.stack(losses).cpu(), {n: g.cpu() for n, g in first_grads.items()}


@pytest.mark.skipif(
    not torch.cuda.is_available() and not interpret_mode(), reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)"
)
@pytest.mark.parametrize("name,memory_mode", [("vma", "episode"), ("vma", "learned"), ("soft_attention", "episode")])
def test_same_seed_same_losses_with_kernels_and_reference(name, memory_mode, monkeypatch):
    ref_losses, ref_grads = train(name, "reference", memory_mode, monkeypatch)
    tri_losses, tri_grads = train(name, "triton", memory_mode, monkeypatch)
    assert_close(tri_losses, ref_losses, atol=1e-4, rtol=1e-5, name=f"{name} [loss, kl_address, kl_latent] per step")
    for n in ref_grads:
        assert_close(tri_grads[n], ref_grads[n], atol=1e-4, rtol=1e-3, name=f"{name} first-step grad {n}")
    assert not torch.equal(ref_losses[0], ref_losses[-1])  # the steps did change the model
