"""``varmem train --workers N``: the Ray Train driver.

The driver checks everything it can before any worker starts — the config (typed on load), the
dataset and its splits, the model section, a resume's checkpoint and its compatibility, the
cluster's CPUs and GPUs — then runs a ``TorchTrainer`` whose workers call the same training loop
as the in-process trainer (:func:`varmem.distributed.worker.train_worker`), with DDP through
``torch.distributed`` (gloo on CPU, nccl on GPU). Every problem a user can fix raises
:class:`ConfigError` (the CLI prints one line and exits 2).

Where things go (paths are made absolute here: workers change directory)::

    RUN_DIR/config.yaml, checkpoints/, metrics.jsonl, final_metrics.json, tensorboard/   (rank 0)
    RUN_DIR/ray/fit-<time>/checkpoint_0000000N/ckpt-N.pt     Ray's name of each reported checkpoint: a hard
                                                             link to RUN_DIR/checkpoints/ckpt-N.pt, so the
                                                             bytes are on disk once (a copy only where the
                                                             two folders are on different filesystems)

Faults: ``FailureConfig(max_failures)`` restarts the worker group after a worker dies; each worker
then continues from the newer of Ray's latest checkpoint (``ray.train.get_checkpoint()``) and the
newest ``RUN_DIR/checkpoints/ckpt-*.pt`` (the steps since it are trained again, with the same
episodes and noise). Each fit has its own Ray run name, so a new fit never picks up a stale
checkpoint by name; ``--resume`` continues from the newest ``RUN_DIR/checkpoints/ckpt-*.pt``, in
process or on Ray alike (Ray 2.60 refuses ``TorchTrainer(resume_from_checkpoint=...)``).

A run directory on object storage (``run.out`` a URI, distributed/remote_run.py) is Ray Train's storage
itself: ``RunConfig(storage_path=RUN_URI, name="checkpoints", storage_filesystem=...)``, so each checkpoint
is stored once, in ``RUN_URI/checkpoints/checkpoint_N/``; the workers keep node-local working copies and
upload the logs. The storage's filesystem is handed to Ray with the endpoint but without credentials:
every node reads its own (AWS_ACCESS_KEY_ID, ... in its environment). ``--resume`` hands the workers the
newest intact checkpoint there (``resume_from``), and the driver prunes the checkpoints of earlier fits
to ``train.keep_checkpoints`` at the end.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varmem.distributed import cluster
from varmem.distributed.cluster import RAY_ENV_DEFAULTS
from varmem.distributed.config import ConfigError, RunConfig, TrainingDiverged
from varmem.distributed.resume import check_run
from varmem.distributed.run import build_model
from varmem.distributed.rundir import FINAL_FILE, clear_run_dir
from varmem.episodes.errors import DataError
from varmem.episodes.storage import is_remote

RAY_DIR = "ray"  # Ray Train's storage inside the run directory
DEFAULT_MAX_FAILURES = 2


@dataclass(frozen=True)
class Launch:
    """How a run is spread over Ray: the command line's --workers, --gpus-per-worker, --address, --max-failures."""

    workers: int
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    address: str | None = None  # None: RAY_ADDRESS, else a private cluster started for the run ("auto": `ray start`'s)
    max_failures: int = DEFAULT_MAX_FAILURES  # worker-group restarts from the latest checkpoint

    def check(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be ≥ 1 for a Ray run (0 = in-process), got {self.workers}")
        if not math.isfinite(self.gpus_per_worker) or self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be a finite number ≥ 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"CPUs per worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise ConfigError(f"--max-failures must be ≥ 0 (or -1: no limit), got {self.max_failures}")

    @property
    def backend(self) -> str:
        return "nccl" if self.gpus_per_worker > 0 else "gloo"


def train_distributed(config: RunConfig, launch: Launch, *, resume: bool = False, overwrite: bool = False,
                      quiet: bool = False, log=None, callbacks: list | None = None,
                      report_logs: bool = False) -> dict[str, Any]:
    """Train ``config`` on ``launch.workers`` Ray Train workers; returns the final metrics
    (``RUN_DIR/final_metrics.json``) with a ``ray`` section (storage path, fit name, launch).

    ``callbacks``: Ray Train ``UserCallback`` s of the controller (e.g. Ray Tune's
    ``TuneReportCallback``); ``report_logs``: report every log line's metrics to Ray, not only the
    checkpoints' (what a Tune scheduler reads; each report is a barrier, see ``RayTrainContext``)."""
    emit = (lambda line: None) if quiet else (log or (lambda line: print(line, flush=True)))
    launch.check()
    config = config.resolve_paths()
    run_dir = Path(config.run.out)

    remote = is_remote(config.run.out)

    # 1. everything that needs no cluster and writes nothing (a resume may set a corrupt checkpoint aside)
    dataset, source, ckpt = check_run(config, resume=resume, overwrite=overwrite)
    build_model(config, dataset.image_shape)  # the model section builds (a bad factory fails here, not in a worker)
    if ckpt is not None and int(ckpt.get("world_size", 1)) != launch.workers:
        raise ConfigError(
            f"checkpoint {source} was trained with {ckpt.get('world_size', 1)} worker(s); resuming with "
            f"--workers {launch.workers} would change the episodes of every step: resume with --workers "
            f"{ckpt.get('world_size', 1)}" + (" (or without --workers)" if int(ckpt.get("world_size", 1)) == 1 else ""))

    # 2. the cluster and its resources
    import ray

    with cluster.connected(launch.address):
        resources = cluster.check_resources(launch.workers, launch.cpus_per_worker, launch.gpus_per_worker)
        from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
        from ray.train import RunConfig as RayRunConfig
        from ray.train import TrainingFailedError
        from ray.train.torch import TorchConfig, TorchTrainer

        from varmem.distributed.worker import train_worker
        from varmem.models.registry import loaded_plugins

        # 3. the run directory (nothing was written before this point) and Ray's storage in it, one name per fit
        if remote:  # the run's own storage is Ray's: RUN_URI/checkpoints, one name for every fit
            from varmem.distributed.remote_run import CHECKPOINTS, RemoteRun

            remote_run = RemoteRun(config.run.out)
            if overwrite and source is None:
                remote_run.clear()
            remote_run.forget_ray_state()  # a fit starts from the checkpoint handed to it, not Ray's record
            storage_path, storage_fs, name = remote_run.location.path, remote_run.location.fs, CHECKPOINTS
            storage = remote_run.checkpoints
            run_dir = remote_run.uri  # type: ignore[assignment]
        else:
            if overwrite and source is None:
                clear_run_dir(run_dir)  # here, not in a worker: a restarted worker must find this fit's checkpoints
            storage = run_dir / RAY_DIR
            shutil.rmtree(storage, ignore_errors=True)  # earlier fits' copies of checkpoints that RUN_DIR/checkpoints holds
            storage.mkdir(parents=True)
            name = _dt.datetime.now().strftime("fit-%Y%m%d-%H%M%S-%f")
            storage_path, storage_fs = str(storage), None
        where = storage if remote else storage / name

        tc = config.train
        emit(f"Ray {ray.__version__}: cluster {resources['address']} with {resources['CPU']:g} CPUs, {resources['GPU']:g} GPUs; "
             f"{launch.workers} worker(s) × ({launch.cpus_per_worker:g} CPU, {launch.gpus_per_worker:g} GPU), "
             f"DDP over {launch.backend}, "
             f"{'restarts' if launch.max_failures < 0 else f'up to {launch.max_failures} restart(s)'} from the last checkpoint")
        emit(f"  global batch {tc.episodes_per_step}×{launch.workers} = {tc.episodes_per_step * launch.workers} episodes "
             f"per step; run directory {run_dir}; Ray storage {where}")
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"config": config.to_dict(), "quiet": quiet, "report_logs": report_logs,
                               "plugins": loaded_plugins(),  # model-family plugins (--plugin): loaded in every worker
                               "resume_from": str(source) if remote and source is not None else None,
                               # a local run: Ray's checkpoint folders are hard links of rank 0's files
                               "ray_storage": None if remote else str(storage / name)},
            torch_config=TorchConfig(backend=launch.backend),
            scaling_config=ScalingConfig(
                num_workers=launch.workers, use_gpu=launch.gpus_per_worker > 0,
                resources_per_worker={"CPU": launch.cpus_per_worker,
                                      **({"GPU": launch.gpus_per_worker} if launch.gpus_per_worker > 0 else {})}),
            run_config=RayRunConfig(
                name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                failure_config=FailureConfig(max_failures=launch.max_failures,
                                             controller_failure_limit=max(1, launch.max_failures)),
                checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
                logging_config=LoggingConfig(log_level="WARNING"),
                callbacks=list(callbacks or []),
                worker_runtime_env={"env_vars": {k: os.environ.get(k, v) for k, v in RAY_ENV_DEFAULTS.items()}},
            ),
        )
        t0 = time.perf_counter()
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            user = _user_error(exc)  # a worker's ConfigError, DataError or TrainingDiverged: its one line
            if user is not None:
                raise user from None
            raise
        if result.error is not None:  # fit() raises in Ray 2.60; kept for versions that return the error
            raise _user_error(result.error) or result.error
        if remote:
            remote_run.prune(tc.keep_checkpoints)  # checkpoints of earlier fits that Ray's record no longer holds
            final = remote_run.read_final()
        else:
            final = json.loads((run_dir / FINAL_FILE).read_text(encoding="utf-8"))
        final["ray"] = {
            "storage": str(where), "fit_s": time.perf_counter() - t0, "workers": launch.workers,
            "gpus_per_worker": launch.gpus_per_worker, "backend": launch.backend, "address": resources["address"],
            "checkpoint": (None if result.checkpoint is None else remote_run.checkpoints.child(
                Path(result.checkpoint.path).name).uri if remote else result.checkpoint.path),
        }
        emit(f"Ray fit done in {final['ray']['fit_s']:.0f} s; its checkpoints: {where}")
        return final


def _user_error(exc: BaseException) -> BaseException | None:
    """The first user-fixable error (ConfigError, DataError, TrainingDiverged) a worker raised inside
    Ray's wrapping, re-created with its message; None when there is none."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (ConfigError, DataError, TrainingDiverged)):
            return type(e)(str(e))
        stack.extend([e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "controller_failure", None)])
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
    return None


def in_ray_job() -> bool:
    """True when this process is the driver of a ``ray job submit`` job (its working directory is
    then Ray's temporary copy of the submitted one)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or "/runtime_resources/working_dir_files/" in os.getcwd()


def check_job_paths(config: RunConfig) -> None:
    """Inside ``ray job submit`` relative paths point into Ray's temporary copy of the working directory
    (``data/`` and ``runs/`` are not uploaded, and what is written there is lost): ask for absolute ones."""
    if not in_ray_job():
        return
    from varmem.episodes.storage import is_uri

    relative = [f"{name}={value!r}" for name, value in (("data.dir", config.data.dir), ("run.out", config.run.out))
                if not is_uri(value) and not Path(value).expanduser().is_absolute()]
    if relative:
        raise ConfigError(
            f"inside a Ray job the working directory is Ray's temporary copy ({os.getcwd()}): "
            f"{', '.join(relative)} must be absolute paths — submit with "
            "--set data.dir=$PWD/<dataset> --out $PWD/runs/<name>")
