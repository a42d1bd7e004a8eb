"""Issue 17's pictures, from scripts/cpu_budget_experiments.sh's evaluations (RUNS/eval/*.json):

* generator_value.png: accuracy on the held-out alphabet (5- and 20-way 1-shot within it) against the number of
  strokes classes a strokes-only run trained on (cell 6, equal budgets), by q(a|x) and by likelihood, with the
  model-free baselines on the same episodes (likelihood's baselines on its own, fewer episodes);
* budget_cells.png: the same accuracies for every equal-budget cell (1-5), a point per cell and method.

    python scripts/plot_cpu_budget.py RUNS/eval OUT_DIR

Error bars: the evaluation's 95% intervals (Wald over targets, as `varmem eval` writes them)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from varmem.plotting import MARKERS, add_footnote, new_figure, save_figure

TASKS = (("5way1shot_within", "5-way 1-shot"), ("20way1shot_within", "20-way 1-shot"))
METHODS = (("q_a", "q(a|x)"), ("likelihood", "likelihood"))
BASELINES = (("hausdorff", "Hausdorff 26×26", ":"), ("hausdorff_native", "Hausdorff 105×105", "--"),
             ("pixel", "pixels", "-."))
CELLS = (("c1_", "small1"), ("c2_", "strokes 10⁴"), ("c3_", "strokes →\nsmall1"), ("c4_", "the best,\n+ rotations,\njitter"),
         ("c5_", "the winner,\ncontinued"))


def load(folder: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())["protocol"]["classification"]
        except (ValueError, KeyError) as exc:
            sys.exit(f"plot_cpu_budget: {path}: not a `varmem eval --save` file with a classification table ({exc})")
    return found


def entry(table: dict, task: str, method: str) -> tuple[float, float] | None:
    e = table.get(task, {}).get(method)
    return None if not e else (100 * e["accuracy"], 100 * (e.get("ci95") or 0.0))


def episodes_note(evals: dict[str, dict], names: list[str]) -> str:
    """The episode counts behind the error bars, read from the evaluations (per method, over ``names``)."""
    parts = []
    for method, label in METHODS:
        counts = sorted({e["episodes"] for name in names for task, _ in TASKS
                         if (e := evals[name].get(task, {}).get(method)) and e.get("episodes")})
        if counts:
            parts.append(f"{label} on {'/'.join(f'{c:,}' for c in counts)} episodes")
    return "error bars: 95% intervals (" + ", ".join(parts) + ")" if parts else "error bars: 95% intervals"


def baseline_lines(ax, evals: dict[str, dict], task: str) -> None:
    for label, key, width in (("baselines", "", 1.2), ("baselines_lik", ", likelihood's episodes", 0.7)):
        table = evals.get(label)
        if table is None:
            continue
        for k, (method, name, style) in enumerate(BASELINES):
            e = entry(table, task, method)
            if e is not None:
                ax.axhline(e[0], linestyle=style, linewidth=width, color=f"C{k + 3}", label=f"{name}{key} ({e[0]:.1f})")


def generator_value(evals: dict[str, dict], out: Path) -> Path | None:
    runs: dict[int, list[str]] = {}  # classes -> the runs (one per training seed)
    budgets = set()
    for name in evals:
        if m := re.fullmatch(r"c6_strokes(\d+)_(\d+)(?:_s\d+)?", name):
            runs.setdefault(int(m.group(1)), []).append(name)
            budgets.add(m.group(2))
    if not runs:
        return None
    sizes = sorted(runs)
    seeds = max(len(v) for v in runs.values())
    fig, axes = new_figure((11.0, 6.2), ncols=2)
    for ax, (task, title) in zip(axes, TASKS):
        for k, (method, label) in enumerate(METHODS):
            means = []
            for n in sizes:
                found = [e for name in runs[n] if (e := entry(evals[name], task, method))]
                if found:
                    means.append((n, sum(e[0] for e in found) / len(found)))
                    for e in found:  # each seed's run with its interval
                        ax.errorbar([n], [e[0]], yerr=[e[1]], marker=MARKERS[k], capsize=3, color=f"C{k}", alpha=0.6,
                                    linestyle="none")
            if means:
                x, y = zip(*means)
                ax.plot(x, y, marker=MARKERS[k], linewidth=1.5, color=f"C{k}",
                        label=label + (" (mean over seeds; points: each seed)" if seeds > 1 else ""))
        baseline_lines(ax, evals, task)
        ax.set_xscale("log")
        ax.set_xlabel("strokes classes in pretraining (log)")
        ax.set_ylabel("accuracy on the held-out alphabet (%)")
        ax.set_title(f"{title} within the held-out alphabet", fontsize=10)
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    add_footnote(fig, f"VMA trained on strokes only, {', '.join(sorted(budgets))} CPU-s each (equal budgets), never shown "
                      "an Omniglot image; training seeds per size: " + ", ".join(f"{n:,}: {len(runs[n])}" for n in sizes) + "; "
                      f"{episodes_note(evals, [n for v in runs.values() for n in v])}.")
    return save_figure(fig, out / "generator_value.png")


def budget_cells(evals: dict[str, dict], out: Path) -> Path | None:
    cells = [(name, label) for prefix, label in CELLS for name in sorted(evals) if name.startswith(prefix)]
    if not cells:
        return None
    fig, axes = new_figure((11.0, 6.2), ncols=2)
    for ax, (task, title) in zip(axes, TASKS):
        for k, (method, label) in enumerate(METHODS):
            pts = [(i + 0.1 * (2 * k - 1), *e) for i, (name, _) in enumerate(cells) if (e := entry(evals[name], task, method))]
            if pts:
                x, y, err = zip(*pts)
                ax.errorbar(x, y, yerr=err, marker=MARKERS[k], capsize=3, linestyle="none", color=f"C{k}", label=label)
        baseline_lines(ax, evals, task)
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([f"{label}\n{name.rsplit('_', 1)[1]} CPU-s" for name, label in cells], fontsize=7)
        ax.set_ylabel("accuracy on the held-out alphabet (%)")
        ax.set_title(f"{title} within the held-out alphabet", fontsize=10)
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    add_footnote(fig, "VMA recipes at equal CPU budgets (the training process's CPU time); "
                      f"{episodes_note(evals, [name for name, _ in cells])}.")
    return save_figure(fig, out / "budget_cells.png")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    folder, out = Path(argv[0]), Path(argv[1])
    if not folder.is_dir():
        sys.exit(f"plot_cpu_budget: {folder} is not a folder of evaluations")
    evals = load(folder)
    for path in (generator_value(evals, out), budget_cells(evals, out)):
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
