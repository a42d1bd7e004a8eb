"""``varmem eval`` and ``varmem compare``.

    varmem eval RUN_DIR [--data DIR] [--split NAME] [--samples K] [--episodes N] [--bound-episodes N] [--seed S]
                [--checkpoint FILE] [--json] [--quiet] [--out-dir DIR] [--lake-runs DIR] [--no-pictures]
                [--classification-episodes N] [--likelihood-episodes N] [--likelihood-samples K]
                [--tasks 5x1,20x1|none] [--tables all|examples|classes|none] [--save FILE]
    varmem compare LABEL=EVAL.json ... [--out-dir DIR] [--markdown] [--force]   (runs side by side; the NLL plots)

Nothing here imports torch until a command runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from varmem.distributed.cli import add_plugin_argument


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="test NLL bound, KL parts and few-shot accuracy of a trained run",
                       description="Evaluate the newest checkpoint of RUN_DIR on fixed, seeded episodes of its eval split, "
                                   "or of any dataset of the same image size (--data). Prints what it will cost first.")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    add_plugin_argument(e)
    e.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="evaluate on this dataset (same image size as the run's) instead of the run's own; "
                        "the training dataset need not be present")
    e.add_argument("--split", default=None, metavar="NAME",
                   help="the split to evaluate on (default: the run's eval split if the dataset has it, else the "
                        "dataset's evaluation split)")
    e.add_argument("--quiet", action="store_true", help="no cost table, progress bars or progress lines (results only)")
    e.add_argument("--samples", type=int, default=1000, help="importance samples K of the NLL bound")
    e.add_argument("--episodes", type=int, default=100,
                   help="evaluation episodes: of the config's episode.eval shape for the headline bound, and per NLL table")
    e.add_argument("--bound-episodes", type=int, default=None, metavar="N",
                   help="episodes for the headline bound alone (default: --episodes)")
    e.add_argument("--seed", type=int, default=None, help="episode and sample seed (default: the config's train.val_seed)")
    e.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint file (default: the newest in RUN_DIR)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: the config's train.device")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--out-dir", type=Path, default=None, help="where the protocol's pictures go (default: RUN_DIR/evaluation)")
    e.add_argument("--lake-runs", type=Path, default=None, metavar="DIR",
                   help="also classify Lake's one-shot runs (a `varmem data build --source lake-runs` directory)")
    e.add_argument("--no-pictures", action="store_true", help="draw no pictures")
    e.add_argument("--classification-episodes", type=int, default=1000, metavar="N",
                   help="episodes per N-way K-shot classification task")
    e.add_argument("--likelihood-episodes", type=int, default=None, metavar="N",
                   help="episodes per task for classification by likelihood (default: --classification-episodes; "
                        "each costs ways × K decodes per query)")
    e.add_argument("--likelihood-samples", type=int, default=10, metavar="K",
                   help="importance samples of each p(x|M_c) in classification by likelihood")
    e.add_argument("--tasks", type=_tasks, default=None, metavar="WxS,...",
                   help="N-way K-shot classification tasks, e.g. 5x1,20x1, or none (default: 5x1,5x5,20x1,20x5)")
    e.add_argument("--tables", choices=("all", "examples", "classes", "none"), default="all",
                   help="which NLL tables: vs examples of one class, vs classes in memory (default: all)")
    e.add_argument("--save", type=Path, default=None, metavar="FILE",
                   help="also write the result as JSON to FILE (atomically: a failed run leaves no partial file)")
    e.set_defaults(func=_eval)

    c = sub.add_parser("compare", help="several runs' evaluations side by side, as tables and plots",
                       description="Compare `varmem eval --save` results: NLL vs examples, NLL vs classes and "
                                   "classification accuracy, one column per run; with --out-dir, the two NLL plots.")
    c.add_argument("evals", nargs="+", metavar="LABEL=EVAL.json", type=_labelled_file,
                   help="a label and a JSON file written by `varmem eval --save` (or --json)")
    c.add_argument("--out-dir", type=Path, default=None,
                   help="write nll_vs_examples.png and nll_vs_classes.png here")
    c.add_argument("--markdown", action="store_true", help="print Markdown tables")
    c.add_argument("--force", action="store_true",
                   help="show results of different datasets, splits or K side by side (labelled as not comparable)")
    c.set_defaults(func=_compare)



def _tasks(text: str) -> tuple[tuple[int, int], ...]:
    """``5x1,20x1`` → ((5, 1), (20, 1)); ``none`` → () (no classification)."""
    if text.strip().lower() == "none":
        return ()
    out = []
    for part in text.split(","):
        ways, sep, shots = part.strip().lower().partition("x")
        if not sep or not ways.isdigit() or not shots.isdigit() or int(ways) < 2 or int(shots) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not WAYSxSHOTS with ways ≥ 2 and shots ≥ 1 (e.g. 5x1,20x1)")
        out.append((int(ways), int(shots)))
    return tuple(out)


def _labelled_file(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not LABEL=EVAL.json")
    return label, Path(path)


def _compare(args: argparse.Namespace) -> int:
    from varmem.episodes.errors import DataError
    from varmem.models.eval.plots import nll_comparison_plot
    from varmem.models.eval.report import comparison_problems, format_comparison, run_info
    from varmem.plotting import save_figure

    results, infos = [], []
    for label, path in args.evals:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no such file (write one with `varmem eval RUN_DIR --save {path}`)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a JSON file ({e})") from None
        protocol = data.get("protocol") if isinstance(data, dict) else None
        if not isinstance(protocol, dict):
            raise DataError(f"{path}: no \"protocol\" field: not the output of `varmem eval --save` / `--json`")
        results.append((label, protocol))
        infos.append(run_info(label, data))
    problems = comparison_problems(infos)
    if problems and not args.force:
        raise DataError(f"cannot compare these evaluations: {'; '.join(problems)}: evaluate every run on the same "
                        "dataset, split and K (varmem eval --data DIR --split NAME --samples K), or pass --force")
    if problems:
        print(f"NOT COMPARABLE (--force): {'; '.join(problems)}")
    print(format_comparison(results, markdown=args.markdown, infos=infos))
    if args.out_dir is not None:
        for table in ("examples", "classes"):
            if any(res.get(f"nll_vs_{table}") for _, res in results):
                print(save_figure(nll_comparison_plot(results, table), args.out_dir / f"nll_vs_{table}.png"))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from varmem.distributed.run import evaluate_run, load_run
    from varmem.models.eval.report import format_headline, format_tables

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device, data=args.data)
    options = {"out_dir": args.out_dir, "lake_runs": args.lake_runs, "pictures": not args.no_pictures,
               "classification_episodes": args.classification_episodes, "likelihood_episodes": args.likelihood_episodes,
               "likelihood_samples": args.likelihood_samples, "tables": {"all": True, "none": False}.get(args.tables, (args.tables,))}
    if args.tasks == ():
        options["classification"] = False
    elif args.tasks is not None:
        options["tasks"] = args.tasks
    result = evaluate_run(run, samples=args.samples, episodes=args.episodes, seed=args.seed, split=args.split,
                          progress=not args.quiet, protocol_options=options, bound_episodes=args.bound_episodes)
    if args.save is not None:
        from varmem.episodes.files import atomic_write_text

        atomic_write_text(args.save, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_headline(result, run.model.family))
    print(format_tables(result["protocol"]))
    return 0
