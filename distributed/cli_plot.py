"""``varmem plot``: the training curves of one or more runs from their ``metrics.jsonl``.

    varmem plot RUN_DIR [RUN_DIR ...] [--metrics loss,nll_bound,...] [--out FILE.png]

One subplot per metric (default: every value the runs log), the runs overlaid and labelled by
their directory names, train solid and val dashed (``distributed/plots.py``). The PNG goes to
``--out`` or ``FIRST_RUN_DIR/plots/training.png``; its path is printed. Imports no torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from varmem.typed import ConfigError

DEFAULT_OUT = Path("plots") / "training.png"  # inside the first RUN_DIR


def add_plot_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="training curves of runs (metrics.jsonl) as a PNG",
                       description="Draw the train and val curves of one or more runs, one subplot per metric, "
                                   "the runs overlaid.")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run directories `varmem train` wrote (their metrics.jsonl), overlaid in one figure")
    p.add_argument("--metrics", type=_names, default=None, metavar="NAME,...",
                   help="metrics to draw, by the names in metrics.jsonl (e.g. loss,nll_bound,kl_latent); "
                        "default: every value logged")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.png",
                   help=f"the PNG to write (default: RUN_DIR/{DEFAULT_OUT.as_posix()} of the first run)")
    p.set_defaults(func=_plot)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected metric names separated by commas, e.g. loss,nll_bound")
    return names


def run_labels(run_dirs: list[Path]) -> list[str]:
    """The directory names, or the paths as given where two names would be the same."""
    names = [d.resolve().name or str(d) for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs)]


def _plot(args: argparse.Namespace) -> int:
    from varmem.distributed.plots import plot_training, read_metrics

    out = args.out if args.out is not None else args.run_dirs[0] / DEFAULT_OUT
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the plot is written as PNG; give a file name ending in .png")
    labels = run_labels(args.run_dirs)
    if len(set(labels)) < len(labels):
        raise ConfigError(f"a run directory is given twice: {', '.join(map(str, args.run_dirs))}")
    runs = {label: read_metrics(d) for label, d in zip(labels, args.run_dirs)}
    path, plotted = plot_training(runs, args.metrics, out)
    metrics = list(dict.fromkeys(m for per_run in plotted.values() for m in per_run))
    print(f"wrote {path} ({len(metrics)} metrics: {', '.join(metrics)}; runs: {', '.join(runs)})")
    return 0
