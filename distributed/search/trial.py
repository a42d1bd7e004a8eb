"""One trial of a search: the base config with the trial's values, trained as an ordinary run in
``SEARCH_DIR/trials/<trial id>``, and its reports to Tune.

``--workers 0`` runs :func:`varmem.distributed.train_loop.train` inside the Tune trial; ``--workers N``
makes the trial a thin driver that fits a Ray Train ``TorchTrainer`` through
:func:`varmem.distributed.ray_train.train_distributed`, whose controller forwards the reports
(:func:`validation_report_callback`). Either way :class:`TrialReporter` decides what reaches Tune: a
report per new validation and per new checkpoint after the first validation, each carrying the search's
metric (distributed/search/metric.py: the newest validation NLL bound by default, ``val_nll_bound``) read
from the run's ``metrics.jsonl``.

A search on object storage (SEARCH_DIR a URI) gives each trial a run directory on the URI
(distributed/remote_run.py): an in-process trial trains in its node-local working copy and uploads its
logs and checkpoints (:func:`varmem.distributed.remote_run.train_remote`), a ``--workers N`` trial's
checkpoints go to Ray Train's storage there. Either way Tune is handed no checkpoint: the run's own, on
the storage, is the only copy, and a restored trial resumes from it (:func:`restore_checkpoint`).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from varmem.distributed.config import RunConfig
from varmem.distributed.metrics import parse_rows, row_tags
from varmem.distributed.rundir import CHECKPOINT_DIR, METRICS_FILE, checkpoint_step, latest_checkpoint, read_metrics
from varmem.distributed.search.metric import DEFAULT, SearchMetric
from varmem.distributed.search.searchdir import TRIALS_DIR
from varmem.distributed.search.space import apply_params
from varmem.episodes.storage import Location, StorageError, is_remote, location

METRIC = DEFAULT.tune_key  # the default metric: the newest validation NLL bound (nats), "val_nll_bound"
MODE = DEFAULT.mode
TIME_ATTR = "step"  # training steps: ASHA's time attribute


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (handed over by ``tune.with_parameters``)."""

    config: dict[str, Any]  # the base run config, paths absolute
    search_dir: str  # absolute
    workers: int = 0
    cpus_per_worker: float = 1.0
    plugins: tuple[str, ...] = ()  # model-family plugins the driver loaded (--plugin): loaded again in each trial
    metric: SearchMetric = DEFAULT  # what the trials are ranked by (distributed/search/metric.py)

    def run_dir(self, trial_id: str) -> "str | Path":
        """The trial's run directory: SEARCH_DIR/trials/<trial id> (a URI when the search is on one)."""
        if is_remote(self.search_dir):
            return f"{self.search_dir.rstrip('/')}/{TRIALS_DIR}/{trial_id}"
        return Path(self.search_dir) / TRIALS_DIR / trial_id


def tune_metrics(train_row: dict[str, Any], val_row: dict[str, Any], step: int,
                 metric: SearchMetric = DEFAULT) -> dict[str, Any]:
    """The values of one Tune report (see "Trials" in distributed/search/__init__.py): every validation value
    as ``val_<name>`` (the search's metric among them), the last training window's as ``train_<name>``."""
    out: dict[str, Any] = {TIME_ATTR: step, metric.tune_key: float(val_row[metric.name]), "val_step": int(val_row["step"])}
    for key in row_tags(val_row):  # every value of the family's, by name
        out[f"val_{key}"] = float(val_row[key])
    for key in (*row_tags(train_row, ("lr", "data_wait")), "elapsed_s"):
        if isinstance(train_row.get(key), (int, float)):
            out[f"train_{key}"] = float(train_row[key])
    return out


def read_rows(run_dir: "Path | Location") -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``, a local folder's or one on object storage ([] when missing)."""
    if isinstance(run_dir, Location):
        try:
            text = run_dir.child(METRICS_FILE).read_bytes().decode("utf-8", errors="replace")
        except StorageError:
            return []
        return [row for _, row in parse_rows(text)[0]]
    return read_metrics(Path(run_dir) / METRICS_FILE)


class TrialReporter:
    """Turns a run directory's progress into Tune reports: one per new validation, and one per new
    checkpoint once the run has validated (Tune refuses a report without the metric). ``run_dir``: a local
    folder (a working copy, for a run on object storage) or a :class:`Location` on object storage."""

    def __init__(self, run_dir: "Path | Location", report: Callable[[dict[str, Any], Path | None], None] | None = None,
                 metric: SearchMetric = DEFAULT):
        self.run_dir = run_dir if isinstance(run_dir, Location) else Path(run_dir)
        self.metric = metric
        self._report = report
        self.val_step: int | None = None  # the last validation reported
        self.ckpt_step: int | None = None  # the last checkpoint reported

    def next_report(self, checkpoint: Path | None = None) -> tuple[dict[str, Any], Path | None] | None:
        """The next report's (metrics, checkpoint or None) when there is something new (and it counts
        as reported), else None. ``checkpoint``: the run's newest checkpoint file, when one was just written."""
        rows = read_rows(self.run_dir)
        vals = [r for r in rows if r.get("kind") == "val" and isinstance(r.get(self.metric.name), (int, float))]
        if not vals:
            return None
        val = vals[-1]
        trains = [r for r in rows if r.get("kind") == "train"]
        train_row = trains[-1] if trains else {}
        ckpt_step = checkpoint_step(checkpoint) if checkpoint is not None else None
        new_val = self.val_step is None or val["step"] > self.val_step
        new_ckpt = ckpt_step is not None and (self.ckpt_step is None or ckpt_step > self.ckpt_step)
        if not (new_val or new_ckpt):
            return None
        self.val_step = int(val["step"])
        if new_ckpt:
            self.ckpt_step = ckpt_step
        step = max(int(train_row.get("step", 0)), int(val["step"]), ckpt_step or 0)
        return tune_metrics(train_row, val, step, self.metric), checkpoint if new_ckpt else None

    def update(self, checkpoint: Path | None = None) -> bool:
        """Report when there is something new; True when it did."""
        found = self.next_report(checkpoint)
        if found is not None:
            self._report(*found)
        return found is not None


def report_to_tune(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """``tune.report``; a checkpoint file goes to Tune as a directory holding a hard link to it."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    checkpoint = Path(checkpoint)
    staging = checkpoint.parent.parent / f".tune-staging-{checkpoint.stem}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            os.link(checkpoint, staging / checkpoint.name)
        except FileNotFoundError:  # pruned meanwhile (a --workers N run keeps writing): report without it
            tune.report(metrics)
            return
        except OSError:
            shutil.copy2(checkpoint, staging / checkpoint.name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_checkpoint(run_dir: "Path | str", tune_checkpoint: Any) -> bool:
    """Put the trial's checkpoint in place for a resume: Tune's copy is copied into the run directory
    when it is newer than the run directory's newest (a restored search, a restarted trial). True when
    the run directory then holds a checkpoint (the trial resumes), False for a fresh start. A run on object
    storage has no copy in Tune: it resumes from its own checkpoints there."""
    from varmem.distributed.worker import checkpoint_file
    from varmem.episodes.files import temporary_sibling

    if is_remote(run_dir):
        from varmem.distributed.remote_run import RemoteRun

        return bool(RemoteRun(str(run_dir)).list_checkpoints())

    if tune_checkpoint is not None:
        with tune_checkpoint.as_directory() as directory:
            theirs = checkpoint_file(directory)
            ours = latest_checkpoint(run_dir)
            if ours is None or checkpoint_step(theirs) > checkpoint_step(ours):
                target = run_dir / CHECKPOINT_DIR / theirs.name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = temporary_sibling(target)
                shutil.copy2(theirs, tmp)
                os.replace(tmp, target)
    return latest_checkpoint(run_dir) is not None


def varmem_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: the base config with ``params`` applied, trained in SEARCH_DIR/trials/<trial id>."""
    from ray import tune

    from varmem.distributed.train_loop import TrainContext, train
    from varmem.models.registry import load_plugins

    load_plugins(setup.plugins)
    run_dir = setup.run_dir(tune.get_context().get_trial_id())
    config = apply_params(RunConfig.from_dict(setup.config), params)
    config = config.with_overrides([f"run.out={json.dumps(str(run_dir))}"])
    config.storage.apply()  # the S3 endpoint (credentials: this node's environment) and this node's shard cache
    remote = is_remote(run_dir)
    resume = restore_checkpoint(run_dir, tune.get_checkpoint())
    if setup.workers == 0 and remote:
        from varmem.distributed.remote_run import RemoteRun, train_remote

        # the loop trains in the run's node-local working copy (where metrics.jsonl is written first);
        # the checkpoints are on the storage already: Tune gets none
        reporter = TrialReporter(RemoteRun(run_dir).staging(0), lambda metrics, _: report_to_tune(metrics, None),
                                 setup.metric)
        train_remote(config, resume=resume, overwrite=not resume, quiet=True, report_logs=True,
                     report=lambda metrics, checkpoint: reporter.update(checkpoint))
        reporter.update()  # a run found complete reports its last validation
        return
    if setup.workers == 0:
        reporter = TrialReporter(run_dir, report_to_tune, setup.metric)
        context = TrainContext(report=lambda metrics, checkpoint: reporter.update(checkpoint), report_logs=True,
                               quiet=True)
        train(config, resume=resume, overwrite=not resume, context=context)
        reporter.update()  # a run found complete reports its last validation
        return
    from varmem.distributed.ray_train import DEFAULT_MAX_FAILURES, Launch, train_distributed

    # a thin driver: the TorchTrainer's controller forwards its workers' reports to this trial
    launch = Launch(workers=setup.workers, cpus_per_worker=setup.cpus_per_worker, max_failures=DEFAULT_MAX_FAILURES)
    train_distributed(config, launch, resume=resume, overwrite=not resume, quiet=True,
                      callbacks=[validation_report_callback(run_dir, setup.metric)], report_logs=True)


def validation_report_callback(run_dir: "Path | str", metric: SearchMetric = DEFAULT):
    """Ray Tune's ``TuneReportCallback`` (a Ray Train controller callback that forwards rank 0's reports
    to the Tune trial) for a ``--workers N`` trial, with the validation values the workers' reports lack:
    the :class:`TrialReporter` of ``run_dir`` decides what is forwarded and adds them. A run on object
    storage: the controller reads metrics.jsonl there (rank 0 uploads it before each report of a Tune
    trial, distributed/worker.py) and forwards no checkpoint (Ray Train stored it once, in the run)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    remote = is_remote(run_dir)

    class ValidationReportCallback(TuneReportCallback):
        def __init__(self, run_dir: "Path | str"):
            super().__init__()  # in the Tune trial: the queue to it; the object then runs in Ray Train's controller
            self.reporter = TrialReporter(location(run_dir) if remote else Path(run_dir), metric=metric)

        def after_report(self, run_context, metrics, checkpoint):
            newest = None
            if checkpoint is not None and remote:  # the newest checkpoint_N/ckpt-N.pt of the run on the storage
                from varmem.distributed.remote_run import RemoteRun

                found = RemoteRun(self.reporter.run_dir).list_checkpoints()
                newest = Path(found[-1][1].path) if found else None  # its name gives the step
            elif checkpoint is not None:
                # rank 0 wrote RUN_DIR/checkpoints/ckpt-N.pt before the report that carries Ray's copy of it
                newest = latest_checkpoint(self.reporter.run_dir)
            found = self.reporter.next_report(newest)
            if found is not None:
                values, with_checkpoint = found
                forward = checkpoint if with_checkpoint is not None and not remote else None
                super().after_report(run_context, [values], forward)

    return ValidationReportCallback(run_dir)


def trial_dirname(trial) -> str:
    """Tune's directory of a trial: its id (the run directory has the same name under trials/)."""
    return trial.trial_id
