"""``varmem train``, ``varmem eval`` and ``varmem compare``.

    varmem train --config FILE [--set section.key=value ...] [--steps N] [--out RUN_DIR] [--resume] [--overwrite]
    varmem train --resume --out RUN_DIR [--steps N]          (the run's own config.yaml)
    varmem train ... --workers N [--gpus-per-worker G] [--address ADDR] [--max-failures F]   (Ray Train DDP)
    python -m varmem.distributed.train ...                          (the same flags; the form for `ray job submit`)
    varmem eval RUN_DIR [--samples K] [--episodes N] [--bound-episodes N] [--seed S] [--checkpoint FILE] [--json]
                [--out-dir DIR] [--lake-runs DIR] [--no-pictures] [--classification-episodes N]
                [--likelihood-episodes N] [--likelihood-samples K] [--tasks 5x1,20x1|none] [--tables all|examples|classes|none] [--save FILE]
    varmem compare LABEL=EVAL.json ... [--out-dir DIR] [--markdown]   (runs side by side; the NLL plots)

Nothing here imports torch until a command runs: ``varmem data ...`` stays light.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from varmem.distributed.cli import add_plugin_argument


TRAIN_DESCRIPTION = ("Train the model of a YAML run config; see configs/ for examples. --workers 0 (the default) "
                     "trains in this process without Ray; --workers N trains with Ray Train DDP on N workers.")


# keys of evaluate_run's result that are not the family's objective terms
OBJECTIVE_BOOKKEEPING = ("nll_bound", "nll_bound_stderr", "objective_nll_bound", "accuracy", "accuracy_stderr", "seed",
                         "samples", "objective_samples", "episodes", "step")


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model from a run config (in-process, or Ray Train DDP with --workers N)",
                       description=TRAIN_DESCRIPTION)
    add_train_arguments(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="test NLL bound, KL parts and few-shot accuracy of a trained run",
                       description="Evaluate the newest checkpoint of RUN_DIR on fixed, seeded episodes of its eval split.")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    add_plugin_argument(e)
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
    c.set_defaults(func=_compare)


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The flags of ``varmem train`` (shared with ``python -m varmem.distributed.train``)."""
    t.add_argument("--config", type=Path, default=None, help="YAML run config (default with --resume: RUN_DIR/config.yaml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field; the value is parsed as YAML and type-checked (repeatable)")
    t.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N")
    t.add_argument("--out", type=Path, default=None, help="the run directory (shorthand for --set run.out=DIR)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    t.add_argument("--overwrite", action="store_true", help="start again in a run directory that holds checkpoints")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    add_plugin_argument(t)
    r = t.add_argument_group("Ray Train (distributed/ray_train.py)")
    r.add_argument("--workers", type=int, default=0, metavar="N",
                   help="Ray Train workers, one DDP rank each (0 = in-process, no Ray); each samples its own episodes")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per worker (nccl when > 0, else gloo)")
    r.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join: host:port, or auto for the one `ray start` runs on this machine "
                        "(default: RAY_ADDRESS, else a private cluster started for the run)")
    r.add_argument("--max-failures", type=int, default=2, metavar="F",
                   help="worker-group restarts from the last checkpoint after a worker dies (default 2; -1 = no limit)")


def load_train_config(args: argparse.Namespace):
    """The run config of ``varmem train``'s arguments (validated; nothing written)."""
    from varmem.distributed.config import CONFIG_FILE, ConfigError, RunConfig

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.out is not None:
        overrides.append(f"run.out={json.dumps(str(args.out))}")
    path = args.config
    if path is None:
        if not (args.resume and args.out is not None):
            raise ConfigError("varmem train needs --config FILE (or --resume --out RUN_DIR to continue a run with its own config)")
        path = args.out / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{path} is missing: {args.out} is not a varmem run directory (pass --config FILE)")
    return RunConfig.load(path, overrides)


def _train(args: argparse.Namespace) -> int:
    from varmem.distributed.config import ConfigError

    config = load_train_config(args)
    if args.workers < 0:
        raise ConfigError(f"--workers must be ≥ 0 (0 = in-process), got {args.workers}")
    from varmem.distributed.ray_train import check_job_paths

    check_job_paths(config)
    if args.workers == 0:
        if args.gpus_per_worker or args.address:
            raise ConfigError("--gpus-per-worker and --address are for Ray runs: add --workers N "
                              "(the in-process trainer uses train.device)")
        from varmem.distributed.train_loop import TrainContext, train

        train(config, resume=args.resume, overwrite=args.overwrite, context=TrainContext(quiet=args.quiet))
        return 0
    from varmem.distributed.ray_train import Launch, train_distributed

    launch = Launch(workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.address,
                    max_failures=args.max_failures)
    train_distributed(config, launch, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    return 0


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
    from varmem.episodes.show import save_png
    from varmem.models.evaluation import format_comparison, nll_comparison_plot

    results = []
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
    print(format_comparison(results, markdown=args.markdown))
    if args.out_dir is not None:
        for table in ("examples", "classes"):
            if any(res.get(f"nll_vs_{table}") for _, res in results):
                print(save_png(nll_comparison_plot(results, table), args.out_dir / f"nll_vs_{table}.png"))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from varmem.distributed.train_loop import evaluate_run, load_run

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    options = {"out_dir": args.out_dir, "lake_runs": args.lake_runs, "pictures": not args.no_pictures,
               "classification_episodes": args.classification_episodes, "likelihood_episodes": args.likelihood_episodes,
               "likelihood_samples": args.likelihood_samples, "tables": {"all": True, "none": False}.get(args.tables, (args.tables,))}
    if args.tasks == ():
        options["classification"] = False
    elif args.tasks is not None:
        options["tasks"] = args.tasks
    result = evaluate_run(run, samples=args.samples, episodes=args.episodes, seed=args.seed, progress=True,
                          protocol_options=options, bound_episodes=args.bound_episodes)
    if args.save is not None:
        from varmem.episodes.files import atomic_write_text

        atomic_write_text(args.save, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    ep = result["episode"]
    shape = f"{ep['ways']}-way, {ep['shots']} shots, {ep['targets']} targets" + (
        f", {ep['distractors']} distractor classes" if ep["distractors"] else "") + (", targets from memory" if ep["targets_from_memory"] else "")
    print(f"{result['run_dir']} at step {result['step']} ({Path(result['checkpoint']).name})")
    print(f"  {result['episodes']} episodes of {result['split']} ({shape}), seed {result['seed']}")
    if "nll_bound" in result:
        print(f"  NLL bound (K={result['samples']})       {result['nll_bound']:10.3f} ± {result['nll_bound_stderr']:.3f} nats")
    if "objective_nll_bound" in result:
        print(f"  NLL bound (K={result['objective_samples']}, objective)  {result['objective_nll_bound']:10.3f} nats")
    labels = {"reconstruction": "−E log p(x|...) (reconstruction)", "kl_address": "KL(q(a|x) || p(a))",
              "kl_latent": "KL(q(z|...) || p(z|...))"}
    for key, value in result.items():  # the family's objective terms, by name
        if key in OBJECTIVE_BOOKKEEPING or not isinstance(value, float):
            continue
        value = -value if key == "reconstruction" else value
        print(f"    {labels.get(key, key):<28} {value:10.3f}")
    if "accuracy" in result:
        print(f"  few-shot accuracy ({run.model.family}'s classifier) {100 * result['accuracy']:9.2f} ± {100 * result['accuracy_stderr']:.2f} %")
    if "protocol" in result:
        from varmem.models.evaluation import format_tables

        print(format_tables(result["protocol"]))
    return 0

