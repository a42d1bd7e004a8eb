"""matplotlib for every plot varmem draws: the Agg backend (no display needed), one style, and
figures written atomically as PNG (a temporary file beside the target, then a rename).

    from varmem.plotting import new_figure, save_figure
    fig, ax = new_figure()
    ax.plot(x, y, label="VMA"); ax.set_xlabel("examples in memory")
    save_figure(fig, "out/nll_vs_examples.png")     # returns the path

Image grids (samples, memory entries) stay PIL (``varmem.episodes.show``): they are pictures,
not plots. Importing this module imports matplotlib; import it inside the functions that plot.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402

from varmem.episodes.files import atomic_write  # noqa: E402

DPI = 120
SIZE = (6.4, 4.0)  # inches: 768 × 480 px at DPI
# one marker per series, so that plots stay readable in grey print
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def new_figure(size: tuple[float, float] = SIZE, **subplots: Any):
    """(figure, axes) with varmem's style: a light grid, no top/right frame."""
    fig, ax = plt.subplots(figsize=size, dpi=DPI, **subplots)
    for a in (ax.flat if hasattr(ax, "flat") else [ax]):
        a.grid(True, alpha=0.3, linewidth=0.6)
        a.spines["top"].set_visible(False)
        a.spines["right"].set_visible(False)
    return fig, ax


def add_footnote(fig, text: str, width: int | None = None, fontsize: float = 7.0) -> None:
    """A note under the axes (wrapped at ``width`` characters: by default what the figure's width holds
    at ~0.62 em per character, DejaVu Sans' mean), with room kept for it when the figure is laid out."""
    if width is None:
        width = max(20, int(fig.get_figwidth() * 72 * 0.97 / (fontsize * 0.62)))
    lines = textwrap.wrap(text, width)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=fontsize, color="0.3", ha="left", va="bottom")
    fig._varmem_bottom = (len(lines) * fontsize * 1.3 + 6) / (fig.get_figheight() * 72)  # fraction of the height


def _layout(fig) -> None:
    fig.tight_layout(rect=(0, getattr(fig, "_varmem_bottom", 0.0), 1, 1))


def figure_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    try:
        _layout(fig)
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def figure_array(fig):
    """The figure as an RGB uint8 array [H, W, 3] (for TensorBoard); the figure is closed."""
    import numpy as np

    _layout(fig)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].copy()


def save_figure(fig, path: str | Path) -> Path:
    """Write the figure to ``path`` as PNG, atomically; the figure is closed. Returns the path."""
    data = figure_png(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return path
