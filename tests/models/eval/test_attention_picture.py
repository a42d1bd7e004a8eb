"""The attention picture (models/eval/attention.py): window geometry against the kernels' filterbanks, the
steps shown, the figure's layout and the files it writes, and the refusal for models without attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from varmem.episodes.build import build_dataset
from varmem.episodes.preprocess import Preprocessing
from varmem.kernels import gaussian_filterbanks
from varmem.models.eval.attention import (COLOURS, attention_figure, attention_picture, attention_windows, model_trace,
                                          save_attention_picture, shown_steps)
from varmem.models.registry import build_model
from tests.episodes.tiny import TinySource
from tests.models.tiny import one_torch_thread  # noqa: F401  (an autouse fixture)

TINY = {"steps": 5, "z_dim": 2, "lstm_units": 12, "write_size": 5, "read_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "tiny26"
    build_dataset(TinySource(alphabets=3, per_alphabet=3, n=6), out, preprocessing=Preprocessing.default(26),
                  progress=False, workers=1)
    return out


def model(**overrides):
    torch.manual_seed(0)
    return build_model({"name": "sequential", **TINY, **overrides}, (26, 26))


@pytest.mark.parametrize("H,W,N", [(26, 26, 12), (28, 28, 5), (13, 17, 4)])
def test_window_corners_are_the_outer_filter_centres(H, W, N):
    """A filter well inside the image (σ = 1) has its centroid Σ_a (a − 1) F[i, a] at μ^i − 1 (0-based)."""
    params = torch.tensor([[0.1, -0.05, 0.0, -1.2, 0.0], [-0.08, 0.0, 0.0, -1.4, 0.3]], dtype=torch.float64)
    F_x, F_y, _ = gaussian_filterbanks(params, N, H, W)
    win = attention_windows(params, N, H, W)
    cx = (F_x * torch.arange(W, dtype=torch.float64)).sum(-1).numpy()  # [B, N] 0-based centroids
    cy = (F_y * torch.arange(H, dtype=torch.float64)).sum(-1).numpy()
    np.testing.assert_allclose(win["x0"], cx[:, 0], atol=1e-3)
    np.testing.assert_allclose(win["x1"], cx[:, -1], atol=1e-3)
    np.testing.assert_allclose(win["y0"], cy[:, 0], atol=1e-3)
    np.testing.assert_allclose(win["y1"], cy[:, -1], atol=1e-3)


def test_the_default_window_spans_the_image():
    """g̃ = 0, δ̃ = 1: the grid's outer centres are pixels 1 and W (DRAW eqs. 22-24), columns 0 and W − 1."""
    win = attention_windows(torch.zeros(1, 5), 12, 26, 26)
    assert (win["x0"][0], win["x1"][0], win["y0"][0], win["y1"][0]) == pytest.approx((0.0, 25.0, 0.0, 25.0))


def test_shown_steps():
    assert shown_steps(5, 12) == [0, 1, 2, 3, 4]
    s = shown_steps(64, 12)
    assert len(s) == 12 and s[0] == 0 and s[-1] == 63 and s == sorted(set(s))
    assert shown_steps(64, 1) == [63]
    with pytest.raises(ValueError):
        shown_steps(0, 3)


def _edge_colours(fig) -> list[str]:
    from matplotlib.colors import to_hex

    return [to_hex(p.get_edgecolor()) for ax in fig.axes for p in ax.patches]


@pytest.mark.parametrize("case,kinds", [({}, ["read", "canvas", "context"]),
                                        ({"hidden_canvas": False, "canvas_channels": 1, "inference": "lstm",
                                          "read_error": True, "context": False}, ["read", "canvas"])])
def test_figure_layout_and_windows(case, kinds):
    m = model(**case)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 26, 26, generator=g) < 0.3).float()
    memory = (torch.rand(3, 1, 1, 26, 26, generator=g) < 0.3).float()
    trace = m.attention_trace(x, memory)
    fig = attention_figure(trace, max_columns=3)
    layout = fig._varmem_attention
    assert layout["kinds"] == kinds and layout["steps"] == [0, 2, 4]
    assert len(fig.axes) == 3 * len(kinds) * 4  # n targets × rows per target, the image + 3 steps
    colours = _edge_colours(fig)
    # one window per (target, row, shown step), in the row's colour
    for kind, colour in (("read", COLOURS["read"]), ("canvas", COLOURS["write"]), ("context", COLOURS["context"])):
        assert colours.count(colour) == (3 * 3 if kind in kinds else 0), kind
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_picture_from_a_dataset_and_its_png(data, tmp_path):
    m = model(steps=20)
    array = attention_picture(m, data, "evaluation", targets=2, max_columns=4)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    red = (array[..., 0] > 180) & (array[..., 1] < 80) & (array[..., 2] < 80)
    assert red.any()  # the write windows are drawn
    path = save_attention_picture(m, data, "evaluation", tmp_path / "att.png", targets=2, max_columns=4)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (array.shape[1], array.shape[0])
    # seeded: the same episode and z draws give the same trace
    a = model_trace(m, data, "evaluation", targets=2, seed=3)
    b = model_trace(m, data, "evaluation", targets=2, seed=3)
    assert torch.equal(a.read, b.read) and torch.equal(a.canvas, b.canvas)


def test_a_model_without_attention_is_refused(data):
    vae = build_model({"name": "vae", "architecture": "mlp", "mlp_hidden": [8, 8], "z_dim": 2}, (26, 26))
    with pytest.raises(ValueError, match=r"the 'vae' family has no attention_trace"):
        attention_picture(vae, data, "evaluation")
