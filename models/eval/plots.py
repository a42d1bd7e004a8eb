"""Plots of evaluation results, with matplotlib (``varmem.plotting``: Agg, one style, atomic PNG).

* :func:`line_plot`: the generic helper — series of y (± error bars) against shared x, which may be
  categories (evenly spaced, e.g. the tables' n and C) or numbers on a linear or log axis (e.g. a
  scaling curve over memory sizes); flagged points are ringed and a footnote explains them.
* :func:`nll_examples_plot`, :func:`nll_classes_plot`: one run's NLL tables; the classes plot
  draws the optimum dashed and flags rows below it (see ``nll_tables.OPTIMUM_NOTE``).
* :func:`nll_conditioning_plot`: the talk's table, NLL vs conditioning examples, a line per C_test.
* :func:`nll_comparison_plot`: several runs' tables in one plot (the talk's table: a line per run and C_test).

Each returns a matplotlib Figure; ``varmem.plotting.save_figure(fig, path)`` writes it.
Importing this module does not import matplotlib.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from varmem.models.eval.nll_tables import OPTIMUM_NOTE

CROWDED_LEGEND = 6  # more labelled lines than this: the legend goes beside the axes, not over the lines


@dataclass
class Series:
    """One line of a :func:`line_plot`: ``y`` over the plot's x (None or NaN: no point there),
    optional error half-widths ``err``, ``dashed`` for a reference line, ``flagged`` points ringed."""

    label: str
    y: Sequence[float | None]
    err: Sequence[float | None] | None = None
    dashed: bool = False
    flagged: Sequence[bool] | None = None


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def line_plot(x: Sequence[Any], series: Sequence[Series], *, title: str, x_label: str, y_label: str,
              x_scale: str = "category", footnote: str | None = None, size: tuple[float, float] | None = None):
    """A line plot of ``series`` against ``x``: ``x_scale`` "category" (x as evenly spaced labels),
    "linear" or "log" (x numbers). Flagged points get a ring and ``footnote`` (wrapped) goes under
    the axes. Returns the Figure."""
    from varmem.plotting import MARKERS, SIZE, add_footnote, new_figure

    if x_scale not in ("category", "linear", "log"):
        raise ValueError(f"line_plot: x_scale must be category, linear or log, got {x_scale!r}")
    fig, ax = new_figure(size or SIZE)
    pos = list(range(len(x))) if x_scale == "category" else [float(v) for v in x]
    for k, s in enumerate(series):
        pts = [(p, y, (s.err or [None] * len(x))[i]) for i, (p, y) in enumerate(zip(pos, s.y)) if _finite(y)]
        if not pts:
            continue
        px, py, pe = zip(*pts)
        style = dict(linestyle="--", color="0.45", marker=None) if s.dashed else dict(marker=MARKERS[k % len(MARKERS)])
        errs = [e if _finite(e) else 0.0 for e in pe]
        ax.errorbar(px, py, yerr=errs if any(errs) else None, label=s.label, capsize=3, linewidth=1.5, **style)
        flags = [(p, y) for i, (p, y) in enumerate(zip(pos, s.y)) if _finite(y) and s.flagged and s.flagged[i]]
        if flags:
            fx, fy = zip(*flags)
            ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=5,
                       label=f"{s.label}: below its optimum (see note)")
    if x_scale == "category":
        ax.set_xticks(pos)
        ax.set_xticklabels([str(v) for v in x])
    elif x_scale == "log":
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    labelled = sum(1 for s in series if s.label)
    if labelled > CROWDED_LEGEND:  # many runs: the legend beside the axes, where it covers no line
        fig.set_figwidth(fig.get_figwidth() + 2.6)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif labelled:
        ax.legend(fontsize=8, frameon=False)
    if footnote:
        add_footnote(fig, footnote)
    return fig


def _flag_note(flagged: Sequence[str]) -> str | None:
    """The footnote of a plot whose points ``flagged`` (e.g. "C=1") are ringed, or None."""
    return f"Ringed ({', '.join(flagged)}): below its optimum; {OPTIMUM_NOTE}." if flagged else None


def nll_examples_plot(rows: Sequence[dict[str, Any]]):
    """The NLL-vs-examples table as a line plot (± standard error)."""
    return line_plot([r["examples"] for r in rows],
                     [Series("NLL bound ± s.e.", [r["nll"] for r in rows], [r["stderr"] for r in rows])],
                     title="NLL vs examples of one class in memory", x_label="examples in memory", y_label="NLL (nats)")


def nll_classes_plot(rows: Sequence[dict[str, Any]]):
    """The NLL-vs-classes table as a line plot, the optimum dashed, rows below it ringed and explained."""
    title = f"NLL vs classes in memory ({rows[0]['examples_per_class']} examples each)" if rows else "NLL vs classes"
    return line_plot([r["classes"] for r in rows],
                     [Series("NLL bound ± s.e.", [r["nll"] for r in rows], [r["stderr"] for r in rows],
                             flagged=[bool(r.get("beats_optimum")) for r in rows]),
                      Series("optimum (own class + log C)", [r["optimum"] for r in rows], dashed=True)],
                     title=title, x_label="classes in memory", y_label="NLL (nats)", footnote=_flag_note([f"C={r['classes']}" for r in rows if r.get("beats_optimum")]))


def _conditioning_series(rows: Sequence[dict[str, Any]], xs: Sequence[int], prefix: str = "") -> list[Series]:
    by = {(r["classes"], r["examples"]): r for r in rows}
    return [Series(f"{prefix}C_test = {C}", [by[(C, n)]["nll"] if (C, n) in by else None for n in xs],
                   [by[(C, n)]["stderr"] if (C, n) in by else None for n in xs])
            for C in sorted({c for c, _ in by})]


CONDITIONING_TITLE = "NLL vs conditioning examples, C_test classes in the set (± s.e.)"


def _conditioning_panels(results: Sequence[tuple[str, dict[str, Any]]]):
    """Several runs' talk's tables: a panel per C_test (sharing the y axis), a line per run (the same
    marker and colour in every panel), n as evenly spaced categories, one legend under the panels."""
    from varmem.plotting import MARKERS, new_figure

    rows = [(label, res.get("nll_conditioning") or []) for label, res in results]
    xs = sorted({r["examples"] for _, rs in rows for r in rs})
    columns = sorted({r["classes"] for _, rs in rows for r in rs})
    if not columns:
        raise ValueError("no run has the talk's table (nll_conditioning): evaluate with --tables conditioning")
    ncols = min(2, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = new_figure((4.2 * ncols, 3.0 * nrows + 0.9), nrows=nrows, ncols=ncols, sharey=True, squeeze=False)
    pos = list(range(len(xs)))
    for a, C in zip(axes.flat, columns):
        for k, (label, rs) in enumerate(rows):
            by = {r["examples"]: r for r in rs if r["classes"] == C}
            pts = [(p, by[n]["nll"], by[n]["stderr"]) for p, n in zip(pos, xs) if n in by and _finite(by[n]["nll"])]
            if pts:
                px, py, pe = zip(*pts)
                a.errorbar(px, py, yerr=[e if _finite(e) else 0.0 for e in pe], label=label, capsize=2, linewidth=1.2,
                           marker=MARKERS[k % len(MARKERS)], markersize=4, color=f"C{k % 10}")
        a.set_title(f"C_test = {C}", fontsize=9)
        a.set_xticks(pos)
        a.set_xticklabels([str(n) for n in xs])
        a.set_xlabel("conditioning examples n", fontsize=8)
    for a in axes[:, 0]:
        a.set_ylabel("NLL (nats)")
    for a in list(axes.flat)[len(columns):]:
        a.set_visible(False)
    legend = {}  # label → handle, over every panel: a run may lack some C_test columns
    for a in axes.flat:
        for h, lab in zip(*a.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    order = [label for label, _ in rows if label in legend]
    handles, labels = [legend[lab] for lab in order], order
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(CONDITIONING_TITLE, fontsize=10)
    fig._varmem_bottom = (0.35 + 0.2 * -(-len(labels) // 4)) / fig.get_figheight()  # room for the legend (save_figure's layout)
    return fig


def nll_conditioning_plot(rows: Sequence[dict[str, Any]]):
    """The talk's table as a line plot: NLL (± s.e.) against the number of conditioning examples n, a
    line per C_test (n as evenly spaced categories: 0, 1, 2, 3, 4, 5, 10, 19)."""
    xs = sorted({r["examples"] for r in rows})
    return line_plot(xs, _conditioning_series(rows, xs), title=CONDITIONING_TITLE, x_label="conditioning examples n",
                     y_label="NLL (nats)")


def nll_comparison_plot(results: Sequence[tuple[str, dict[str, Any]]], table: str = "examples"):
    """Several runs' NLL tables in one plot: ``results`` = (label, protocol result) pairs, ``table``
    "examples" or "classes"; x is the union of the rows' n (or C), a run without a row at some x
    has a gap there. Rows below their optimum are ringed. ``table`` "conditioning": the talk's table, a
    panel per C_test (2 × 2 for the default four), a line per run, one legend."""
    if table == "conditioning":
        return _conditioning_panels(results)
    if table not in ("examples", "classes"):
        raise ValueError(f"table must be 'examples', 'classes' or 'conditioning', got {table!r}")
    key = "examples" if table == "examples" else "classes"
    tables = [(label, {r[key]: r for r in (res.get(f"nll_vs_{table}") or [])}) for label, res in results]
    xs = sorted({x for _, rows in tables for x in rows})
    series = [Series(label, [rows[x]["nll"] if x in rows else None for x in xs],
                     [rows[x]["stderr"] if x in rows else None for x in xs],
                     flagged=[bool(rows.get(x, {}).get("beats_optimum")) for x in xs])
              for label, rows in tables]
    flagged = [f"{label} C={x}" for label, rows in tables for x in xs if rows.get(x, {}).get("beats_optimum")]
    title = ("NLL bound vs examples of one class in memory (± s.e.)" if table == "examples"
             else "NLL bound vs classes in memory (± s.e.)")
    return line_plot(xs, series, title=title, x_label="examples in memory" if table == "examples" else "classes in memory",
                     y_label="NLL (nats)", footnote=_flag_note(flagged))
