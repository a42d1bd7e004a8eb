"""At initialization VMA's address is live: keys depend on the image and q(a|x) gets gradients.

With PyTorch's default layer initialization the 6-layer conv pyramid and the embedding head
washed the image out of h(m) (mean pairwise cosine of the keys 0.999996 on strokes26), S varied
by ~10⁻⁴ nats over the memory and the gradients reaching h and h_q were ~10⁻⁶ of the decoder's:
the address collapsed to the prior for hundreds of steps (docs/RESULTS.md). These tests pin the
He initialization of ``varmem.models.networks`` that fixed it, on the configs/vma_strokes.yaml sizes.
"""
from __future__ import annotations

import torch

from varmem.models.base import Batch

from varmem.models import VMAConfig, build_model
from varmem.models.networks import ConvPyramid

SIZE = 26
STROKES = dict(channels=(16, 16, 32, 32, 32, 32), hidden=128, z_dim=32, match_dim=64)


def stroke_images(n: int, seed: int = 0) -> torch.Tensor:
    """n binary 26×26 images of 3 random 2-pixel-wide horizontal or vertical strokes: [n, 1, 26, 26]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        for _ in range(3):
            r, c = (int(v) for v in torch.randint(2, SIZE - 12, (2,), generator=g))
            length = int(torch.randint(6, 12, (1,), generator=g))
            if torch.rand(1, generator=g) < 0.5:
                x[i, 0, r : r + 2, c : c + length] = 1.0
            else:
                x[i, 0, r : r + length, c : c + 2] = 1.0
    return x


def mean_pairwise_cosine(f: torch.Tensor) -> float:
    f = torch.nn.functional.normalize(f.flatten(1), dim=-1)
    c = f @ f.T
    n = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (n * n - n))


def test_pyramid_top_features_depend_on_the_image():
    torch.manual_seed(0)
    pyramid = ConvPyramid((SIZE, SIZE), STROKES["channels"])
    x = stroke_images(16)
    with torch.no_grad():
        top = pyramid.top(pyramid(x))
    assert mean_pairwise_cosine(x) < 0.5
    # default PyTorch init: ≈ 0.9995 (the biases' constant dominates); He init: ≈ 0.72
    assert mean_pairwise_cosine(top) < 0.95


def test_vma_address_is_live_at_initialization():
    torch.manual_seed(0)
    model = build_model(VMAConfig(architecture="conv", **STROKES), (SIZE, SIZE))
    G, M = 2, 16
    memory = stroke_images(G * M).view(G, M, 1, SIZE, SIZE)
    targets = memory.clone()  # recall: each target is a memory entry
    with torch.no_grad():
        keys = model.encode_memory(memory).keys  # [G, M, d]
        log_q = model.address_log_posterior(Batch(memory, targets))  # [G, M, M]
    assert max(mean_pairwise_cosine(k) for k in keys) < 0.95, "h(m) is (almost) the same for every entry"
    spread = (log_q.max(-1).values - log_q.min(-1).values).mean()
    assert spread > 0.05, f"S varies by only {float(spread):.2e} nats over the memory: q(a|x) is uniform"

    obj = model.objective(Batch(memory, targets), 4, generator=torch.Generator().manual_seed(0))
    model.zero_grad()
    obj.loss.backward()

    def norm(*modules) -> float:
        return float(torch.sqrt(sum(p.grad.square().sum() for m in modules for p in m.parameters())))

    address, decoder = norm(model.key_embed, model.query_embed), norm(model.decoder)
    assert torch.isfinite(torch.tensor([address, decoder])).all()
    # default PyTorch init: ≈ 9e-7 of the decoder's gradient (S spread ≈ 3e-4); He init: ≈ 7e-3 (spread ≈ 0.3)
    assert address > 1e-3 * decoder, f"address gradients {address:.2e} vs decoder {decoder:.2e}"
