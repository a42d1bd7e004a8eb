"""``varmem tune`` and ``python -m varmem.distributed.tune``: the command line of a search.

    varmem tune --config FILE --space SPACE.yaml [--samples N] [--scheduler fifo|asha] [--out SEARCH_DIR]
                [--set section.key=value ...] [--steps N] [--workers N] [--cpus-per-trial C]
                [--max-concurrent N] [--grace-period STEPS] [--reduction-factor F] [--seed S]
                [--address ADDR] [--s3-endpoint URL] [--overwrite] [--quiet] [--check]
    varmem tune --resume --out SEARCH_DIR [--trust-search-dir] [--s3-endpoint URL] [--check]

SEARCH_DIR may be a URI on object storage (s3://bucket/searches/NAME, gs://..., hdfs://...).

Nothing here imports torch or Ray until a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from varmem.distributed.cli import add_command, add_plugin_argument, module_main
from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.search.searchdir import RESULTS_JSON, SCHEDULERS, SEARCH_FILE, SearchOptions
from varmem.distributed.search.space import load_space_file
from varmem.distributed.search.trust import TRUST_FLAG

if TYPE_CHECKING:
    from varmem.distributed.search.driver import SearchResult

TUNE_DESCRIPTION = ("Search run-config fields with Ray Tune: each trial a training run (in-process, or a Ray Train "
                    "TorchTrainer with --workers N), optional ASHA early stopping on the validation NLL bound; "
                    "writes SEARCH_DIR/results.csv, results.json and best_config.yaml. See distributed/search/__init__.py "
                    "for the space file format.")


def add_tune_command(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "tune", help="hyper-parameter search with Ray Tune (ASHA early stopping; results table, best config)",
                description=TUNE_DESCRIPTION, arguments=add_tune_arguments, run=_tune)


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    d = SearchOptions()
    p.add_argument("--config", type=Path, default=None, help="the base YAML run config")
    add_plugin_argument(p)
    p.add_argument("--space", type=Path, default=None, help="the search space YAML (see configs/space_vma.yaml)")
    p.add_argument("--samples", type=int, default=None, metavar="N", help=f"trials per grid point (default {d.samples})")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None,
                   help=f"asha: stop trials early on the validation NLL bound (default {d.scheduler})")
    p.add_argument("--out", type=str, default=None, metavar="SEARCH_DIR",
                   help="the search directory, a path or a URI (s3://bucket/searches/NAME, gs://..., hdfs://...) "
                        "(default runs/tune-<config name>)")
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible server for s3:// URIs, e.g. http://127.0.0.1:9000 (shorthand for --set "
                        "storage.s3_endpoint=URL; default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS; "
                        "credentials only from the environment)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a field of the base config (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N (ASHA's max_t)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="0: each trial trains in-process (default); N: each trial is a Ray Train TorchTrainer of N workers")
    p.add_argument("--cpus-per-trial", type=float, default=None, metavar="C",
                   help=f"CPUs of an in-process trial, or of each worker with --workers N (default {d.cpus_per_trial:g})")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="trials at once (default: as many as the cluster's CPUs hold)")
    p.add_argument("--grace-period", type=int, default=None, metavar="STEPS",
                   help="ASHA: steps before a trial may be stopped (default train.val_every)")
    p.add_argument("--reduction-factor", type=float, default=None, metavar="F",
                   help=f"ASHA: keep the best 1/F of the trials at each rung (default {d.reduction_factor:g})")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the sampled values (default {d.seed})")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: RAY_ADDRESS, else a cluster started here for the search)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out SEARCH_DIR")
    p.add_argument(TRUST_FLAG, dest="trust_search_dir", action="store_true",
                   help="with --resume: restore the search even when its pickled state is not signed with your key "
                        "(a search from someone else: Ray unpickles its state, which can run any code; see docs/TUNE.md)")
    p.add_argument("--overwrite", action="store_true", help="start again in a search directory that holds a search")
    p.add_argument("--quiet", action="store_true", help="no progress output (the results table is still printed)")
    p.add_argument("--check", action="store_true",
                   help="check the config, the space and the options (the dataset, the episodes, every model the space "
                        "can build) and exit: no Ray, no trial, nothing written")


_OPTION_FLAGS = {"samples": "--samples", "scheduler": "--scheduler", "workers": "--workers",
                 "cpus_per_trial": "--cpus-per-trial", "max_concurrent": "--max-concurrent",
                 "grace_period": "--grace-period", "reduction_factor": "--reduction-factor", "seed": "--seed"}


def _tune(args: argparse.Namespace) -> int:
    from varmem.distributed.search.driver import run_search  # Ray, torch: only when a search runs
    from varmem.episodes import storage

    if args.s3_endpoint:
        storage.configure_default(args.s3_endpoint)  # a search directory on that server (checked here: one line if bad)
    if args.resume:
        given = [flag for name, flag in _OPTION_FLAGS.items() if getattr(args, name) is not None]
        given += [flag for flag, value in (("--config", args.config), ("--space", args.space), ("--steps", args.steps),
                                           ("--set", args.overrides), ("--overwrite", args.overwrite)) if value]
        if args.out is None:
            raise ConfigError("--resume needs --out SEARCH_DIR (the directory of the interrupted search)")
        if given:
            raise ConfigError(f"--resume continues the search in {args.out} with its own config, space and options "
                              f"({args.out.rstrip('/')}/{SEARCH_FILE}): leave out {', '.join(given)}")
        result = run_search(None, None, None, args.out, resume=True, address=args.address, quiet=args.quiet,
                            trust_search_dir=args.trust_search_dir, check_only=args.check, s3_endpoint=args.s3_endpoint)
        return _exit_status(result)
    if args.trust_search_dir:
        raise ConfigError(f"{TRUST_FLAG} only applies to --resume (a new search has no state to trust)")
    if args.config is None or args.space is None:
        raise ConfigError("varmem tune needs --config FILE and --space SPACE.yaml (or --resume --out SEARCH_DIR)")
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.s3_endpoint:
        overrides.append(f"storage.s3_endpoint={json.dumps(args.s3_endpoint)}")  # every trial's, too
    base = RunConfig.load(args.config, overrides)
    space, metric = load_space_file(args.space)
    options = SearchOptions(**{name: getattr(args, name) for name in _OPTION_FLAGS if getattr(args, name) is not None})
    out = args.out if args.out is not None else Path("runs") / f"tune-{args.config.stem}"
    result = run_search(base, space, options, out, overwrite=args.overwrite, address=args.address, quiet=args.quiet,
                        space_file=args.space, check_only=args.check, metric=metric)
    return _exit_status(result)


def _exit_status(result: SearchResult) -> int:
    """0 (also after --check), 130 when interrupted (unfinished trials), 1 when no trial validated."""
    if result.checked_only:
        return 0
    if result.interrupted:
        return 130
    if result.best is None:
        print("varmem: error: no trial finished a validation (see the errors in the table and in "
              f"{str(result.search_dir).rstrip('/')}/{RESULTS_JSON})", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m varmem.distributed.tune``: ``varmem tune`` as a module (the form for ``ray job submit``)."""
    return module_main("python -m varmem.distributed.tune", TUNE_DESCRIPTION, add_tune_arguments, _tune, argv)
