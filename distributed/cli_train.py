"""``varmem train``.

    varmem train --config FILE [--set section.key=value ...] [--steps N] [--out RUN_DIR] [--resume] [--overwrite]
    varmem train --resume --out RUN_DIR [--steps N]          (the run's own config.yaml)
    varmem train --config FILE --cpu-budget SECONDS [--resume] (stop at this much CPU time, every session counted)
    varmem train --config FILE --init-from RUN_DIR[/checkpoints/ckpt-N.pt] --out NEW_RUN_DIR   (fine-tune another run's model)
    varmem train ... --workers N [--gpus-per-worker G] [--address ADDR] [--max-failures F]   (Ray Train DDP)
    python -m varmem.distributed.train ...                          (the same flags; the form for `ray job submit`)

Nothing here imports torch until a command runs: ``varmem data ...`` stays light.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from varmem.distributed.cli import add_command, add_plugin_argument


TRAIN_DESCRIPTION = ("Train the model of a YAML run config; see configs/ for examples. --workers 0 (the default) "
                     "trains in this process without Ray; --workers N trains with Ray Train DDP on N workers.")


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "train", help="train a model from a run config (in-process, or Ray Train DDP with --workers N)",
                description=TRAIN_DESCRIPTION, arguments=add_train_arguments, run=_train)


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The flags of ``varmem train`` (shared with ``python -m varmem.distributed.train``)."""
    t.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML run config (default with --resume: RUN_DIR/config.yaml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field; the value is parsed as YAML and type-checked (repeatable)")
    t.add_argument("--steps", type=int, default=None, metavar="N", help="shorthand for --set train.steps=N")
    t.add_argument("--cpu-budget", type=float, default=None, metavar="SECONDS",
                   help="stop at the first step boundary where the run's CPU time (this process's, all threads, "
                        "validation included, plus its earlier sessions' from the checkpoint; summed over --workers) "
                        "reaches SECONDS, then validate and checkpoint as at train.steps (shorthand for --set "
                        "train.cpu_budget_s=SECONDS)")
    t.add_argument("--out", type=str, default=None, metavar="RUN_DIR",
                   help="the run directory, a path or a URI (s3://bucket/runs/NAME, gs://..., hdfs://...) "
                        "(shorthand for --set run.out=DIR)")
    t.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in the run directory (a corrupt newer one is set aside, "
                        "with a warning)")
    t.add_argument("--overwrite", action="store_true", help="start again in a run directory that holds checkpoints")
    t.add_argument("--init-from", default=None, metavar="RUN_DIR[/CKPT]",
                   help="start this new run from another run's model weights: a run directory (its newest intact "
                        "checkpoint), a checkpoint file, or a URI of either; a fresh optimizer, from step 0. The model "
                        "section must build the same parameter shapes, the data section may differ. The run records "
                        "the exact file and its sha256 (shorthand for --set train.init_from=...; --resume wins)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.add_argument("--no-verify-shards", action="store_true",
                   help="trust the dataset's shards without checking their sha256 against the manifest "
                        "(shorthand for --set data.verify_shards=false; checked once, then cheap, by default)")
    t.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible server for s3:// URIs, e.g. http://127.0.0.1:9000 (shorthand for --set "
                        "storage.s3_endpoint=URL; default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS; "
                        "credentials only from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ~/.aws)")
    add_plugin_argument(t)
    r = t.add_argument_group("Ray Train (distributed/ray_train.py)")
    r.add_argument("--workers", type=int, default=0, metavar="N",
                   help="Ray Train workers, one DDP rank each; each samples its own episodes (default 0: in-process, no Ray)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per worker (nccl when > 0, else gloo; default 0)")
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
    if getattr(args, "cpu_budget", None) is not None:
        overrides.append(f"train.cpu_budget_s={args.cpu_budget!r}")  # 0, < 0, inf, nan: train.cpu_budget_s's error
    if args.out is not None:
        overrides.append(f"run.out={json.dumps(str(args.out))}")
    if getattr(args, "init_from", None) is not None:
        overrides.append(f"train.init_from={json.dumps(str(args.init_from))}")
    if getattr(args, "no_verify_shards", False):
        overrides.append("data.verify_shards=false")
    if getattr(args, "s3_endpoint", None):
        overrides.append(f"storage.s3_endpoint={json.dumps(args.s3_endpoint)}")
    path = args.config
    if path is None:
        if not (args.resume and args.out is not None):
            raise ConfigError("varmem train needs --config FILE (or --resume --out RUN_DIR to continue a run with its own config)")
        from varmem.episodes.storage import is_remote

        if is_remote(args.out):  # the run's config.yaml on object storage
            return _remote_config(args.out, getattr(args, "s3_endpoint", None), overrides)
        path = Path(args.out) / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{path} is missing: {args.out} is not a varmem run directory (pass --config FILE)")
    return RunConfig.load(path, overrides)


def _remote_config(run_uri: str, endpoint: str | None, overrides: list[str]):
    """A run's own config.yaml, read from object storage, with the command line's overrides."""
    import tempfile

    from varmem.distributed.config import CONFIG_FILE, ConfigError, RunConfig
    from varmem.episodes import storage

    if endpoint:
        storage.configure(endpoint)
    where = storage.location(run_uri).child(CONFIG_FILE)
    if not where.is_file():
        raise ConfigError(f"{where} is missing: {run_uri} is not a varmem run directory (pass --config FILE)")
    with tempfile.TemporaryDirectory(prefix="varmem-config-") as tmp:
        path = Path(tmp) / CONFIG_FILE
        path.write_bytes(where.read_bytes())
        config = RunConfig.load(path, overrides)
    storage.configure(config.storage.s3_endpoint or endpoint)
    return config


def check_launch_flags(args: argparse.Namespace) -> None:
    """--workers ≥ 0, --gpus-per-worker a finite number ≥ 0, --max-failures ≥ -1: checked before the config."""
    from varmem.distributed.config import ConfigError

    if args.workers < 0:
        raise ConfigError(f"--workers must be ≥ 0 (0 = in-process), got {args.workers}")
    if not math.isfinite(args.gpus_per_worker) or args.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be ≥ 0 and finite, got {args.gpus_per_worker}")
    if args.max_failures < -1:
        raise ConfigError(f"--max-failures must be ≥ 0 (or -1: no limit), got {args.max_failures}")


def _train(args: argparse.Namespace) -> int:
    from varmem.distributed.config import ConfigError

    check_launch_flags(args)
    config = load_train_config(args)
    from varmem.distributed.init_from import check_before_launch, for_resume, pin
    from varmem.distributed.ray_train import check_job_paths

    check_job_paths(config)
    # train.init_from: a resumed run keeps the source it recorded; a fresh one pins its source now, once, for
    # every process that trains (the exact checkpoint file and its sha256, recorded in the run's config)
    config, source = (for_resume(config), None) if args.resume else pin(config)
    if source is not None and args.workers > 0:
        check_before_launch(config, source)  # the shapes fit before a cluster starts
    if args.workers == 0:
        if args.gpus_per_worker or args.address:
            raise ConfigError("--gpus-per-worker and --address are for Ray runs: add --workers N "
                              "(the in-process trainer uses train.device)")
        from varmem.episodes.storage import is_remote

        if is_remote(config.run.out):
            from varmem.distributed.remote_run import train_remote

            train_remote(config, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
            return 0
        from varmem.distributed.train_loop import TrainContext, train

        train(config, resume=args.resume, overwrite=args.overwrite, context=TrainContext(quiet=args.quiet))
        return 0
    from varmem.distributed.ray_train import Launch, train_distributed

    launch = Launch(workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.address,
                    max_failures=args.max_failures)
    train_distributed(config, launch, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    return 0
