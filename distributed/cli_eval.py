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


# The defaults of `varmem eval` that set its cost, and what it costs with them (the epilog of --help).
# DEFAULT_EXAMPLES, DEFAULT_TASKS and CLASS_TABLE_TARGETS are the protocol's (models/eval: nll_tables,
# classification; they import torch, this module must not): tests/distributed/test_hardening_cli.py
# checks that they agree and that the epilog's numbers are what models/eval/cost.py computes.
SAMPLES, EPISODES, CLASSIFICATION_EPISODES, LIKELIHOOD_SAMPLES = 1000, 100, 1000, 10
DEFAULT_EXAMPLES, DEFAULT_TASKS, CLASS_TABLE_TARGETS = (1, 2, 3, 4, 5, 10, 19), ((5, 1), (5, 5), (20, 1), (20, 5)), 8
EXAMPLE = {"config": "configs/vma_strokes.yaml", "targets": 32, "objective_samples": 4, "eval_classes": 220}


def class_rows(classes: int) -> list[int]:
    """The C rows of the NLL-vs-classes table: 1, 2, 4, ... and the split's class count (nll_tables.class_counts)."""
    return [1 << i for i in range(classes.bit_length()) if 1 << i < classes] + [classes]


def default_cost() -> list:
    """The parts of an evaluation with the defaults (models/eval/cost.py's PartCost) for EXAMPLE's run:
    the headline, the two NLL tables, classification by likelihood (q(a|x) decodes nothing)."""
    from varmem.models.eval.cost import bound_cost, classification_cost, nll_classes_cost, nll_examples_cost

    T, k, C = EXAMPLE["targets"], EXAMPLE["objective_samples"], EXAMPLE["eval_classes"]
    rows = class_rows(C)
    return [bound_cost(EPISODES, T, SAMPLES, k), nll_examples_cost(EPISODES, DEFAULT_EXAMPLES, SAMPLES, k),
            nll_classes_cost(EPISODES, rows, min(C, CLASS_TABLE_TARGETS), SAMPLES, k),
            *(classification_cost(f"{w}x{s}", "likelihood", CLASSIFICATION_EPISODES, w, w, LIKELIHOOD_SAMPLES)
              for w, s in DEFAULT_TASKS)]


def eval_epilog() -> str:
    """What the defaults cost, as a table: a line per part (its formula with the flags that set it), the total."""
    headline, examples, classes, *likelihood = default_cost()
    by_likelihood = sum(p.decodes for p in likelihood)
    total = headline.decodes + examples.decodes + classes.decodes + by_likelihood
    rows = [("headline NLL bound", f"--episodes {EPISODES} × {EXAMPLE['targets']} targets × (--samples {SAMPLES} + K)",
             headline.decodes),
            ("NLL vs examples", f"{EPISODES} episodes × {len(DEFAULT_EXAMPLES)} rows (n = "
                                f"{','.join(map(str, DEFAULT_EXAMPLES))}) × ({SAMPLES} + K)", examples.decodes),
            ("NLL vs classes", f"{EPISODES} episodes × ({CLASS_TABLE_TARGETS} + "
                               f"{sum(min(c, CLASS_TABLE_TARGETS) for c in class_rows(EXAMPLE['eval_classes']))} targets: "
                               f"C = 1,2,4,...,{EXAMPLE['eval_classes']}) × {SAMPLES}", classes.decodes),
            ("classification", f"--tasks {','.join(f'{w}x{s}' for w, s in DEFAULT_TASKS)}, "
                               f"--classification-episodes {CLASSIFICATION_EPISODES} each:", None),
            ("", "by q(a|x): encoder passes only", 0),
            ("", f"by likelihood: {CLASSIFICATION_EPISODES} × ways² × --likelihood-samples {LIKELIHOOD_SAMPLES}",
             by_likelihood),
            ("in all", "", total)]
    width = max(len(formula) for _, formula, _ in rows)
    lines = [f"  {part:<19} {formula:<{width}}  {'' if n is None else f'{n / 1e6:5.1f} M decodes' if n else '    none'}".rstrip()
             for part, formula, n in rows]
    return "\n".join([
        "What the defaults cost, in decodes (one decoder evaluation: a target × an importance sample), for the",
        f"VMA of {EXAMPLE['config']} (8-way episodes, {EXAMPLE['targets']} targets, K = "
        f"{EXAMPLE['objective_samples']}) on {EXAMPLE['eval_classes']} held-out classes:",
        *lines,
        f"That is {total / MAKE_MAIN_DECODES:.0f}× `make main`'s evaluation ({MAKE_MAIN_DECODES / 1e6:.1f} M decodes, "
        "1.5 min on the 2-core CPU): over an hour there.",
        "The exact table for the run is printed before anything runs. A quick look, as `make main` evaluates:",
        "  --samples 100 --episodes 20 --classification-episodes 300 --likelihood-episodes 20 --tasks 5x1,20x1",
    ])


# `make main`: --samples 100 --episodes 20 --classification-episodes 300 --likelihood-episodes 20 --tasks 5x1,20x1
MAKE_MAIN_DECODES = 296_520


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="test NLL bound, KL parts and few-shot accuracy of a trained run",
                       description="Evaluate the newest checkpoint of RUN_DIR on fixed, seeded episodes of its eval split, "
                                   "or of any dataset of the same image size (--data). Prints what it will cost first: "
                                   "the defaults are a paper's protocol, expensive on a CPU (below).",
                       epilog=eval_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a run directory `varmem train` wrote (its config.yaml and checkpoints/)")
    add_plugin_argument(e)
    e.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="evaluate on this dataset (same image size as the run's) instead of the run's own; "
                        "the training dataset need not be present")
    e.add_argument("--split", default=None, metavar="NAME",
                   help="the split to evaluate on (default: the run's eval split if the dataset has it, else the "
                        "dataset's evaluation split)")
    e.add_argument("--quiet", action="store_true", help="no cost table, progress bars or progress lines (results only)")
    e.add_argument("--no-verify-shards", action="store_true",
                   help="trust the dataset's shards without checking their sha256 against the manifest")
    e.add_argument("--samples", type=int, default=SAMPLES, metavar="K",
                   help=f"importance samples K of the NLL bound and the NLL tables (default {SAMPLES})")
    e.add_argument("--episodes", type=int, default=EPISODES, metavar="N",
                   help="evaluation episodes: of the config's episode.eval shape for the headline bound, and per NLL "
                        f"table (default {EPISODES})")
    e.add_argument("--bound-episodes", type=int, default=None, metavar="N",
                   help="episodes for the headline bound alone (default: --episodes)")
    e.add_argument("--seed", type=int, default=None, metavar="S",
                   help="episode and sample seed (default: the config's train.val_seed)")
    e.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                   help="a checkpoint file (default: the newest intact one in RUN_DIR)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where the model runs (default: the config's train.device)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="where the protocol's pictures go (default: RUN_DIR/evaluation)")
    e.add_argument("--lake-runs", type=Path, default=None, metavar="DIR",
                   help="also classify Lake's one-shot runs (a `varmem data build --source lake-runs` directory)")
    e.add_argument("--no-pictures", action="store_true", help="draw no pictures")
    e.add_argument("--classification-episodes", type=int, default=CLASSIFICATION_EPISODES, metavar="N",
                   help=f"episodes per N-way K-shot classification task (default {CLASSIFICATION_EPISODES})")
    e.add_argument("--likelihood-episodes", type=int, default=None, metavar="N",
                   help="episodes per task for classification by likelihood (default: --classification-episodes; "
                        "each costs ways × K decodes per query)")
    e.add_argument("--likelihood-samples", type=int, default=LIKELIHOOD_SAMPLES, metavar="K",
                   help=f"importance samples of each p(x|M_c) in classification by likelihood (default {LIKELIHOOD_SAMPLES})")
    e.add_argument("--tasks", type=_tasks, default=None, metavar="WxS,...",
                   help="N-way K-shot classification tasks, e.g. 5x1,20x1, or none (default: "
                        f"{','.join(f'{w}x{s}' for w, s in DEFAULT_TASKS)})")
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
    c.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="write nll_vs_examples.png and nll_vs_classes.png here (default: no plots)")
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


def read_saved_evaluation(path: Path) -> dict:
    """A `varmem eval --save` file, parsed; DataError naming it when it is not one (missing, a folder, not
    JSON, not UTF-8). Its fields are checked by :func:`varmem.models.eval.report.check_saved_evaluation`."""
    from varmem.episodes.errors import DataError

    if not path.exists():
        raise DataError(f"{path}: no such file (write one with `varmem eval RUN_DIR --save {path}`)")
    if not path.is_file():
        raise DataError(f"{path}: " + ("a directory" if path.is_dir() else "not a regular file")
                        + ", not an evaluation file: give the JSON file `varmem eval --save` wrote")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a JSON file (not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits; arrays nested thousands deep
        raise DataError(f"{path}: not a JSON file `varmem eval` writes ({type(e).__name__}: {str(e)[:120]})") from None


def _compare(args: argparse.Namespace) -> int:
    from varmem.episodes.errors import DataError
    from varmem.models.eval.plots import nll_comparison_plot
    from varmem.models.eval.report import check_saved_evaluation, comparison_problems, format_comparison, run_info
    from varmem.plotting import save_figure

    labels = [label for label, _ in args.evals]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise DataError(f"label {twice[0]!r} is given twice: give each evaluation its own LABEL=EVAL.json")
    results, infos = [], []
    for label, path in args.evals:
        data = read_saved_evaluation(path)
        results.append((label, check_saved_evaluation(data, str(path))))
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

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device, data=args.data,
                   verify_shards=False if args.no_verify_shards else None)
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
