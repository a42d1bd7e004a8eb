"""The attention picture of a DRAW-style model (the ``sequential`` family: Rezende et al. 2016, DRAW).

For a few targets of the eval split, each reconstructed by the model (z_t drawn from q), a block of
rows per target and a column per shown step t (all T steps when T ≤ ``max_columns``, else
``max_columns`` evenly spaced steps, the first and the last among them):

* ``read``    the target with the read window of step t (green): where q(z_t | ·) looks;
* ``canvas``  the canvas after step t, σ(f_o(c_t)) (grey: probabilities), with the write window of
              step t (red);
* ``context`` the exemplar in memory with the context read window of step t (blue), for a model
              that reads a context (absent for DRAW).

The first column shows the image itself (target, final canvas, exemplar) without a window. A window
is drawn as the rectangle through the centres of its outer filters, μ^1 .. μ^N = g ∓ (N − 1)/2 · δ
(DRAW eqs. 19-24 with the kernels' conventions: 1-based pixel a drawn at 0-based column a − 1); the
filters' width σ is not drawn (``attention_windows`` returns it).

    fig = attention_figure(trace)                         # matplotlib figure (a model's AttentionTrace)
    array = attention_picture(model, dataset, "evaluation")   # RGB uint8 [H, W, 3], e.g. for TensorBoard
    save_attention_picture(model, dataset, "evaluation", "out/attention.png")

TensorBoard: ``writer.add_image("attention/steps", attention_picture(...), step, dataformats="HWC")``.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.kernels.gaussian_attention import clamp_params
from varmem.models.eval.passes import check_positive, derive_seed, device_of, eval_mode, open_dataset, seeded

COLOURS = {"read": "#1a9641", "write": "#d7191c", "context": "#2c7bb6"}  # green, red, blue
CELL = 0.62  # inches per image cell
MARGIN = 0.12  # of the image side, around each cell: windows that reach past the edge stay visible


def attention_windows(params: torch.Tensor, N: int, H: int, W: int) -> dict[str, np.ndarray]:
    """The window of each parameter row ``params [..., 5]`` for an N × N grid on an H × W image, in 0-based
    pixel coordinates (column a − 1 for pixel a): ``x0, x1, y0, y1`` the outer filter centres, ``gx, gy``
    the grid centre, ``delta`` the stride and ``sigma`` the filters' standard deviation, each [...]."""
    p = clamp_params(params.detach().to("cpu", torch.float64))  # as the kernels use them
    gx_t, gy_t, log_s2, log_dt, _ = p.unbind(-1)
    gx = (W + 1) / 2 * (gx_t + 1) - 1  # eq. 22, 1-based → 0-based
    gy = (H + 1) / 2 * (gy_t + 1) - 1  # eq. 23
    delta = (max(H, W) - 1) / (N - 1) * torch.exp(log_dt)  # eq. 24
    half = (N - 1) / 2 * delta  # μ^N − g (eqs. 19, 20)
    out = {"x0": gx - half, "x1": gx + half, "y0": gy - half, "y1": gy + half, "gx": gx, "gy": gy, "delta": delta,
           "sigma": torch.exp(0.5 * log_s2)}
    return {k: v.numpy() for k, v in out.items()}


def shown_steps(steps: int, max_columns: int) -> list[int]:
    """0-based steps to draw: all of them when ``steps`` ≤ ``max_columns``, else ``max_columns`` evenly
    spaced ones that include the first and the last."""
    check_positive(steps=steps, max_columns=max_columns)
    if steps <= max_columns:
        return list(range(steps))
    if max_columns == 1:
        return [steps - 1]
    return sorted({round(i * (steps - 1) / (max_columns - 1)) for i in range(max_columns)})


def _rows(trace) -> list[str]:
    return ["read", "canvas"] + (["context"] if trace.context is not None else [])


def attention_figure(trace, *, max_columns: int = 12, title: str | None = None):
    """The matplotlib figure of a model's attention trace (``SequentialModel.attention_trace``): a block of
    rows per target (read, canvas, context), a column per shown step. See the module docstring."""
    from matplotlib.patches import Rectangle

    from varmem.plotting import new_figure

    n, T = trace.read.shape[:2]
    H, W = trace.targets.shape[-2:]
    steps = shown_steps(T, max_columns)
    kinds = _rows(trace)
    rows, cols = n * len(kinds), len(steps) + 1
    fig, axes = new_figure((CELL * cols + 0.9, CELL * rows + 0.6), nrows=rows, ncols=cols, squeeze=False)
    targets = trace.targets[:, 0].detach().cpu().numpy()  # [n, H, W]
    canvas = trace.canvas[:, :, 0].detach().cpu().numpy()  # [n, T, H, W]
    context = None if trace.context_image is None else trace.context_image[:, 0].detach().cpu().numpy()
    windows = {"read": attention_windows(trace.read, trace.read_size, H, W),
               "write": attention_windows(trace.write, trace.write_size, H, W)}
    if trace.context is not None:
        windows["context"] = attention_windows(trace.context, trace.read_size, H, W)
    for i in range(n):
        for r, kind in enumerate(kinds):
            row = axes[i * len(kinds) + r]
            base = {"read": targets[i], "canvas": canvas[i, -1], "context": context[i] if context is not None else None}[kind]
            for j, ax in enumerate(row):
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    image = base
                    ax.set_ylabel(kind if i == 0 else "", fontsize=7)
                else:
                    t = steps[j - 1]
                    image = canvas[i, t] if kind == "canvas" else base
                    win = windows["write" if kind == "canvas" else kind]
                    colour = COLOURS["write" if kind == "canvas" else kind]
                    x0, x1, y0, y1 = (float(win[k][i, t]) for k in ("x0", "x1", "y0", "y1"))
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.0))
                    if i == 0 and r == 0:
                        ax.set_title(f"t={t + 1}", fontsize=7)
                ax.imshow(1.0 - image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")  # ink dark
                m = MARGIN * max(H, W)  # a window partly off the image stays visible; farther out it is clipped
                ax.set_xlim(-0.5 - m, W - 0.5 + m)
                ax.set_ylim(H - 0.5 + m, -0.5 - m)
    text = title or (f"attention over T={T} steps: read window (green) on the target, write window (red) on the "
                     f"canvas σ(f_o(c_t)) after step t" + (", context read (blue) on the exemplar"
                                                          if trace.context is not None else ""))
    width = max(30, int(fig.get_figwidth() * 72 / (7 * 0.62)))  # characters per line at 7 pt
    fig.suptitle(textwrap.fill(text, width), fontsize=7)
    fig._varmem_attention = {"rows": rows, "cols": cols, "steps": steps, "kinds": kinds}
    return fig


def _episode(model, dataset: Dataset | str, split: str, targets: int, seed: int, binarize: str, threshold: float):
    """(targets [n, 1, H, W], memory [n, 1, 1, H, W]): n classes of the split, one exemplar and one target each."""
    dataset = open_dataset(dataset)
    n = min(targets, dataset.split(split).num_classes)
    spec = EpisodeSpec(split=split, ways=n, shots=1, targets=1, binarize=binarize, threshold=threshold)
    ep = EpisodeSampler(dataset, spec, seed).episode(0)
    device = device_of(model)
    return ep.targets.to(device), ep.memory.unsqueeze(1).to(device)


def model_trace(model, dataset: Dataset | str, split: str, *, targets: int = 4, seed: int = 0, binarize: str = "none",
                threshold: float = 0.5):
    """The model's attention trace on ``targets`` targets of ``split`` (each with one exemplar of its class in
    memory), seeded: the same episode and the same z draws for one seed."""
    check_positive(targets=targets)
    if not callable(getattr(model, "attention_trace", None)):
        raise ValueError(f"attention picture: the {getattr(model, 'family', '') or type(model).__name__!r} family has no "
                         "attention_trace (only DRAW-style families, e.g. 'sequential', draw attention windows)")
    x, memory = _episode(model, dataset, split, targets, seed, binarize, threshold)
    with eval_mode(model), seeded(derive_seed(seed, "attention"), device_of(model)):
        return model.attention_trace(x, memory)


def attention_picture(model, dataset: Dataset | str, split: str, *, targets: int = 4, max_columns: int = 12, seed: int = 0,
                      binarize: str = "none", threshold: float = 0.5) -> np.ndarray:
    """The attention picture as an RGB uint8 array [height, width, 3] (TensorBoard: dataformats="HWC")."""
    from varmem.plotting import figure_array

    trace = model_trace(model, dataset, split, targets=targets, seed=seed, binarize=binarize, threshold=threshold)
    return figure_array(attention_figure(trace, max_columns=max_columns))


def save_attention_picture(model, dataset: Dataset | str, split: str, path: str | Path, **options: Any) -> Path:
    """Write the attention picture as PNG (``varmem.plotting.save_figure``); options as :func:`attention_picture`."""
    from varmem.plotting import save_figure

    max_columns = options.pop("max_columns", 12)
    trace = model_trace(model, dataset, split, **options)
    return save_figure(attention_figure(trace, max_columns=max_columns), path)
