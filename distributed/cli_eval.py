"""``varmem eval`` and ``varmem compare``.

    varmem eval RUN_DIR [--data DIR] [--split NAME] [--samples K] [--episodes N] [--bound-episodes N] [--seed S]
                [--checkpoint FILE] [--json] [--quiet] [--out-dir DIR] [--lake-runs DIR] [--no-pictures]
                [--classification-episodes N] [--likelihood-episodes N] [--likelihood-samples K]
                [--tasks 5x1,20x1|none] [--alphabets between,within]
                [--methods q_a,classifier,likelihood,cosine,pixel,hausdorff,hausdorff_native]
                [--hausdorff-data DIR] [--hausdorff-lake-runs DIR]
                [--tables all|none|examples,classes,conditioning] [--conditioning-classes 1,2,3,4]
                [--conditioning-examples 0,1,2,3,4,5,10,19] [--save FILE]
    varmem compare LABEL=EVAL.json ... [--out-dir DIR] [--markdown] [--force]
        (runs side by side: the NLL tables, the talk's table, the classification benchmark with the pixel
        baseline and the seeds' numbers; with --out-dir the plots, comparison.md, classification.csv and
        nll_conditioning.csv)

Nothing here imports torch until a command runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from varmem.distributed.cli import add_plugin_argument


# The defaults of `varmem eval` that set its cost, and what it costs with them (the epilog of --help).
# DEFAULT_EXAMPLES, DEFAULT_TASKS, CLASS_TABLE_TARGETS, the conditioning table's rows and columns, the
# alphabets and LIKELIHOOD_EPISODES are the protocol's (models/eval: nll_tables, classification,
# conditioning, protocol; they import torch, this module must not): tests/distributed/test_hardening_cli.py
# and tests/models/eval/test_benchmark.py check that they agree and that the epilog's numbers are what
# models/eval/cost.py computes.
SAMPLES, EPISODES, CLASSIFICATION_EPISODES, LIKELIHOOD_SAMPLES, LIKELIHOOD_EPISODES = 1000, 100, 1000, 10, 100
DEFAULT_EXAMPLES, DEFAULT_TASKS, CLASS_TABLE_TARGETS = (1, 2, 3, 4, 5, 10, 19), ((5, 1), (5, 5), (20, 1), (20, 5)), 8
DEFAULT_ALPHABETS = ("between", "within")
CONDITIONING_CLASSES, CONDITIONING_EXAMPLES = (1, 2, 3, 4), (0, 1, 2, 3, 4, 5, 10, 19)
TABLES = ("examples", "classes", "conditioning")
METHOD_NAMES = ("q_a", "classifier", "likelihood", "cosine", "pixel", "hausdorff", "hausdorff_native")
# the example run: VMA conditions on at least one entry, so the n = 0 row is skipped for it
EXAMPLE = {"config": "configs/vma_strokes.yaml", "targets": 32, "objective_samples": 4, "eval_classes": 220,
           "min_memory_size": 1}


def class_rows(classes: int) -> list[int]:
    """The C rows of the NLL-vs-classes table: 1, 2, 4, ... and the split's class count (nll_tables.class_counts)."""
    return [1 << i for i in range(classes.bit_length()) if 1 << i < classes] + [classes]


def default_cost() -> list:
    """The parts of an evaluation with the defaults (models/eval/cost.py's PartCost) for EXAMPLE's run:
    the headline, the three NLL tables (the talk's: a part per C_test), classification by likelihood
    between and within alphabets (the other methods decode nothing)."""
    from varmem.models.eval.cost import (bound_cost, classification_cost, nll_classes_cost, nll_conditioning_cost,
                                         nll_examples_cost)

    T, k, C = EXAMPLE["targets"], EXAMPLE["objective_samples"], EXAMPLE["eval_classes"]
    rows = class_rows(C)
    n_rows = [n for n in CONDITIONING_EXAMPLES if n >= EXAMPLE["min_memory_size"]]
    return [bound_cost(EPISODES, T, SAMPLES, k), nll_examples_cost(EPISODES, DEFAULT_EXAMPLES, SAMPLES, k),
            nll_classes_cost(EPISODES, rows, min(C, CLASS_TABLE_TARGETS), SAMPLES, k),
            *(nll_conditioning_cost(EPISODES, c, n_rows, SAMPLES, k) for c in CONDITIONING_CLASSES),
            *(classification_cost(f"{w}x{s} {a}", "likelihood", LIKELIHOOD_EPISODES, w, w, LIKELIHOOD_SAMPLES)
              for a in DEFAULT_ALPHABETS for w, s in DEFAULT_TASKS)]


def eval_epilog() -> str:
    """What the defaults cost, as a table: a line per part (its formula with the flags that set it), the total."""
    parts = default_cost()
    headline, examples, classes = parts[:3]
    conditioning = parts[3:3 + len(CONDITIONING_CLASSES)]
    likelihood = parts[3 + len(CONDITIONING_CLASSES):]
    by_likelihood = sum(p.decodes for p in likelihood)
    by_conditioning = sum(p.decodes for p in conditioning)
    total = sum(p.decodes for p in parts)
    n_rows = [n for n in CONDITIONING_EXAMPLES if n >= EXAMPLE["min_memory_size"]]
    rows = [("headline NLL bound", f"--episodes {EPISODES} × {EXAMPLE['targets']} targets × (--samples {SAMPLES} + K)",
             headline.decodes),
            ("NLL vs examples", f"{EPISODES} episodes × {len(DEFAULT_EXAMPLES)} rows (n = "
                                f"{','.join(map(str, DEFAULT_EXAMPLES))}) × ({SAMPLES} + K)", examples.decodes),
            ("NLL vs classes", f"{EPISODES} episodes × ({CLASS_TABLE_TARGETS} + "
                               f"{sum(min(c, CLASS_TABLE_TARGETS) for c in class_rows(EXAMPLE['eval_classes']))} targets: "
                               f"C = 1,2,4,...,{EXAMPLE['eval_classes']}) × {SAMPLES}", classes.decodes),
            ("the talk's table", f"{EPISODES} episodes × {len(n_rows)} rows (n = {','.join(map(str, n_rows))}) × "
                                 f"C_test = {'+'.join(map(str, CONDITIONING_CLASSES))} targets × ({SAMPLES} + K)",
             by_conditioning),
            ("classification", f"--tasks {','.join(f'{w}x{s}' for w, s in DEFAULT_TASKS)} × --alphabets "
                               f"{','.join(DEFAULT_ALPHABETS)}:", None),
            ("", f"q(a|x), own classifier, cosine, pixels, Hausdorff: {CLASSIFICATION_EPISODES} episodes each", 0),
            ("", f"by likelihood: --likelihood-episodes {LIKELIHOOD_EPISODES} × ways² × K={LIKELIHOOD_SAMPLES}",
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
        f"That is {total / MAKE_MAIN_DECODES:.0f}× `make main`'s evaluation ({MAKE_MAIN_DECODES / 1e6:.1f} M decodes): "
        "over an hour on the 2-core CPU.",
        "The exact table for the run is printed before anything runs. A quick look, as `make main` evaluates:",
        "  --samples 100 --episodes 20 --classification-episodes 300 --likelihood-episodes 20 --tasks 5x1,20x1",
        "The talk's table has an n = 0 row only for models whose min_memory_size is 0 (GMN with pseudo-inputs, the",
        "Neural Statistician, the VAE). A classifier-only family (no likelihood: Matching Networks) skips the NLL",
        "tables and classification by likelihood, saying so.",
    ])


# `make main`: --samples 100 --episodes 20 --classification-episodes 300 --likelihood-episodes 20 --tasks 5x1,20x1
# (with the default --tables all and --alphabets between,within)
MAKE_MAIN_DECODES = 527_120


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
    e.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible server for s3:// URIs (RUN_DIR, --data, --checkpoint), e.g. http://127.0.0.1:9000 "
                        "(default: the run's storage.s3_endpoint, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS; "
                        "credentials only from the environment)")
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
                   help=f"episodes per task for classification by likelihood (default: {LIKELIHOOD_EPISODES}, or "
                        "--classification-episodes if fewer; each costs ways × K decodes per query)")
    e.add_argument("--likelihood-samples", type=int, default=LIKELIHOOD_SAMPLES, metavar="K",
                   help=f"importance samples of each p(x|M_c) in classification by likelihood (default {LIKELIHOOD_SAMPLES})")
    e.add_argument("--tasks", type=_tasks, default=None, metavar="WxS,...",
                   help="N-way K-shot classification tasks (one query per class), each run for every --alphabets "
                        "mode, e.g. 5x1,20x1, or none (default: "
                        f"{','.join(f'{w}x{s}' for w, s in DEFAULT_TASKS)})")
    e.add_argument("--alphabets", type=_alphabets, default=None, metavar="MODES",
                   help="how a task draws its classes: between (uniformly from the split, across alphabets), within "
                        "(all from one alphabet, Lake-style, harder), or both: between,within (the default)")
    e.add_argument("--methods", type=_names, default=None, metavar="M,...",
                   help="classification methods: q_a (q(a|x), address families), classifier (the family's own, e.g. "
                        "matching, kl), likelihood (p(x|M_c)), cosine (nearest neighbour on the model's embedding), "
                        "pixel (nearest neighbour on pixels, no model: the floor), hausdorff (nearest neighbour by Lake "
                        "et al.'s modified Hausdorff distance between ink points, no model), hausdorff_native (the same "
                        "on the originals: --hausdorff-data). Default: every one the model has, pixel and hausdorff "
                        "(and hausdorff_native with --hausdorff-data); one it lacks is skipped with the reason")
    e.add_argument("--hausdorff-data", type=Path, default=None, metavar="DIR",
                   help="the evaluation data at its original resolution, for hausdorff_native (Lake's baseline on "
                        "105×105 images): the same source built with the same split options and --size 105 "
                        "(`varmem data build ... --size 105`); checked row by row against the evaluation data, so "
                        "that every episode holds the same images at both sizes")
    e.add_argument("--hausdorff-lake-runs", type=Path, default=None, metavar="DIR",
                   help="Lake's runs at their original resolution, for hausdorff_native on them (`varmem data build "
                        "--source lake-runs --path all_runs.zip --size 105`); needs --lake-runs, checked against it")
    e.add_argument("--tables", type=_tables, default="all", metavar="LIST",
                   help="which NLL tables: examples (vs examples of one class), classes (vs classes in memory), "
                        "conditioning (the talk's table: vs conditioning examples for C_test classes), as a comma list, "
                        "all or none (default: all)")
    e.add_argument("--conditioning-classes", type=_ints(1), default=CONDITIONING_CLASSES, metavar="C,...",
                   help="the C_test columns of the talk's table: classes in the conditioning set (default: "
                        f"{','.join(map(str, CONDITIONING_CLASSES))})")
    e.add_argument("--conditioning-examples", type=_ints(0), default=CONDITIONING_EXAMPLES, metavar="N,...",
                   help="its rows: conditioning examples n, dealt round-robin over the C_test classes; n = 0 only for "
                        f"models whose min_memory_size is 0 (default: {','.join(map(str, CONDITIONING_EXAMPLES))})")
    e.add_argument("--save", type=Path, default=None, metavar="FILE",
                   help="also write the result as JSON to FILE (atomically: a failed run leaves no partial file)")
    e.set_defaults(func=_eval)

    c = sub.add_parser("compare", help="several runs' evaluations side by side, as tables and plots",
                       description="Compare `varmem eval --save` results: NLL vs examples and NLL vs classes, one column "
                                   "per run; the talk's table (NLL vs conditioning examples per C_test) and the "
                                   "classification benchmark (models × task and method, the pixel baseline first), a "
                                   "row per run, with the seed papers' numbers beside ours where a row matches, "
                                   "labelled as theirs. Files of an older `varmem eval` load; a table they lack is "
                                   "named. With --out-dir, the plots, Markdown and CSV files.")
    c.add_argument("evals", nargs="+", metavar="LABEL=EVAL.json", type=_labelled_file,
                   help="a label and a JSON file written by `varmem eval --save` (or --json)")
    c.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="write the NLL plots (nll_vs_examples.png, nll_vs_classes.png, nll_conditioning.png), "
                        "comparison.md (every table, Markdown), classification.csv and nll_conditioning.csv (one row "
                        "per cell) here (default: print only)")
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


def _names(text: str) -> tuple[str, ...]:
    """``q_a,cosine`` → ("q_a", "cosine"): identifiers (a family's classifier names are open-ended)."""
    out = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [n for n in out if not n.isidentifier()]
    if not out or bad:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of method names (e.g. {','.join(METHOD_NAMES)})")
    return out


def _alphabets(text: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    if not out or any(a not in DEFAULT_ALPHABETS for a in out):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of between, within")
    return out


def _tables(text: str) -> str | tuple[str, ...]:
    """``all`` / ``none`` / a comma list of examples, classes, conditioning."""
    if text.strip().lower() in ("all", "none"):
        return text.strip().lower()
    out = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    if not out or any(t not in TABLES for t in out):
        raise argparse.ArgumentTypeError(f"{text!r} is not all, none or a comma list of {', '.join(TABLES)}")
    return out


def _ints(low: int):
    def parse(text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in text.split(",")]
        if not parts or any(not p.isdigit() or int(p) < low for p in parts):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers ≥ {low}")
        return tuple(dict.fromkeys(int(p) for p in parts))
    parse.__name__ = f"integers ≥ {low}"
    return parse


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
    from varmem.models.eval.report import check_saved_evaluation, comparison_problems, format_comparison, run_info

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
        for path in write_comparison(results, infos, args.out_dir, problems):
            print(path)
    return 0


def write_comparison(results, infos, folder: Path, problems: list[str]) -> list[Path]:
    """The comparison's files in ``folder``, each written atomically: the NLL plots of the tables some run
    has, comparison.md (every table in Markdown), classification.csv and nll_conditioning.csv."""
    from varmem.episodes.files import atomic_write_text
    from varmem.models.eval.plots import nll_comparison_plot
    from varmem.models.eval.report import classification_csv, classification_table, conditioning_csv, format_comparison
    from varmem.plotting import save_figure

    written = []
    for table, key in (("examples", "nll_vs_examples"), ("classes", "nll_vs_classes"), ("conditioning", "nll_conditioning")):
        if any(res.get(key) for _, res in results):
            name = "nll_conditioning.png" if table == "conditioning" else f"nll_vs_{table}.png"
            written.append(save_figure(nll_comparison_plot(results, table), folder / name))
    folder.mkdir(parents=True, exist_ok=True)
    head = f"NOT COMPARABLE (--force): {'; '.join(problems)}\n\n" if problems else ""
    written.append(atomic_write_text(folder / "comparison.md",
                                     head + format_comparison(results, markdown=True, infos=infos) + "\n"))
    table = classification_table(results)
    if table is not None:
        written.append(atomic_write_text(folder / "classification.csv", classification_csv(table[-1])))
    if any(res.get("nll_conditioning") for _, res in results):
        written.append(atomic_write_text(folder / "nll_conditioning.csv", conditioning_csv(results)))
    return [Path(p) for p in written]


def _eval(args: argparse.Namespace) -> int:
    from varmem.distributed.run import evaluate_run, load_run
    from varmem.models.eval.report import format_headline, format_tables

    if args.s3_endpoint:
        from varmem.episodes import storage

        # not storage.configure: opening the dataset applies the run's storage section, which would clear it when
        # the run names no endpoint; the run's own storage.s3_endpoint wins over it (a bad URL is one line)
        storage.configure_default(args.s3_endpoint)
    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device, data=args.data,
                   verify_shards=False if args.no_verify_shards else None)
    originals = _originals(args, run)
    options = {"out_dir": args.out_dir, "lake_runs": args.lake_runs, "pictures": not args.no_pictures,
               "classification_episodes": args.classification_episodes, "likelihood_episodes": args.likelihood_episodes,
               "likelihood_samples": args.likelihood_samples,
               "tables": {"all": True, "none": False}.get(args.tables, args.tables) if isinstance(args.tables, str) else args.tables,
               "methods": args.methods, "conditioning_classes": args.conditioning_classes,
               "conditioning_examples": args.conditioning_examples}
    options.update(originals)
    if args.alphabets is not None:
        options["alphabets"] = args.alphabets
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


def _originals(args: argparse.Namespace, run) -> dict:
    """The protocol options of --hausdorff-data / --hausdorff-lake-runs, each checked now, before anything runs:
    a DataError naming the folder and the first row that differs when it does not hold the same images as the
    evaluation data (or --lake-runs) at another size."""
    from varmem.episodes.dataset import Dataset
    from varmem.episodes.errors import DataError
    from varmem.models.eval.hausdorff import check_same_episodes

    out = {}
    if args.hausdorff_data is not None:
        native = Dataset.open(args.hausdorff_data, verify=False if args.no_verify_shards else None)
        check_same_episodes(run.dataset, native, run.eval_split(args.split)[0], what="--hausdorff-data")
        out["hausdorff_data"] = native
    if args.hausdorff_lake_runs is not None:
        if args.lake_runs is None:
            raise DataError("--hausdorff-lake-runs needs --lake-runs (the runs at the model's size, which it must match)")
        native = Dataset.open(args.hausdorff_lake_runs, verify=False if args.no_verify_shards else None)
        check_same_episodes(Dataset.open(args.lake_runs, verify=False if args.no_verify_shards else None), native,
                            what="--hausdorff-lake-runs")
        out["hausdorff_lake_runs"] = native
    return out
