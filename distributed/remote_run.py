"""A run directory on object storage (``run.out: s3://bucket/runs/NAME``, any ``pyarrow.fs`` URI).

Nothing but object storage is shared between the nodes of a cluster, so a run on a URI keeps all of its
files there, and each process that trains keeps a node-local working copy (the staging folder) that
the training loop writes to as it always does::

    RUN_URI/config.yaml                                  the full config (run.out = RUN_URI)
    RUN_URI/metrics.jsonl                                rank 0's rows, uploaded at every checkpoint, at the end
                                                         and at most every PUSH_EVERY_S while it logs
    RUN_URI/tensorboard/events.out.tfevents.*            rank 0's events, uploaded with metrics.jsonl
    RUN_URI/final_metrics.json                           at the end
    RUN_URI/checkpoints/checkpoint_00000020/ckpt-00000020.pt
                                                         every checkpoint, once: Ray Train's own storage
                                                         (RunConfig(storage_path=RUN_URI, name="checkpoints",
                                                         storage_filesystem=...)); in-process runs upload to
                                                         the same place
    RUN_URI/checkpoints/checkpoint_manager_snapshot.json, .validate_storage_marker   Ray Train's bookkeeping

The staging folder, ``$TMPDIR/varmem-runs/<digest of RUN_URI>/rank-R``, is emptied when a worker starts: a
worker restarted on another node has nothing of it, and every rank starts from the same checkpoint — the
newer of Ray Train's latest (``ray.train.get_checkpoint()``) and the one the driver chose for ``--resume``,
both read from the storage — never from a file only one node has. Rank 0 first downloads
``metrics.jsonl`` and the TensorBoard events, so that the training loop cuts them at the checkpoint as
it does locally; it uploads what changed (:class:`RemoteSync`).

Checkpoints are the same archives as local ones (their sha256 record included) and load through
:func:`varmem.distributed.rundir.load_checkpoint`; :meth:`RemoteRun.newest_intact` skips (and for a
resume sets aside, as ``ckpt-N.pt.corrupt``) a corrupt newer one, as locally.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from varmem.distributed.config import ConfigError, RunDirError
from varmem.distributed.metrics import METRICS_FILE
from varmem.distributed.rundir import (CORRUPT_SUFFIX, FINAL_FILE, TENSORBOARD_DIR, CorruptCheckpoint, load_checkpoint,
                                       warn)
from varmem.episodes.storage import Location, StorageError, display, location, uri_digest

CHECKPOINTS = "checkpoints"  # Ray Train's run name under RUN_URI: its storage is RUN_URI/checkpoints/
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it reported
PUSH_EVERY_S = 30.0  # metrics.jsonl and TensorBoard events go up at least this often while a run logs
_CKPT_DIR_RE = re.compile(r"^checkpoint_(\d+)$")
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_dir_name(step: int) -> str:
    """Ray Train's folder of a checkpoint (``ray.train.report(..., checkpoint_dir_name=...)``)."""
    return f"checkpoint_{step:08d}"


class RemoteRun:
    """A run directory on object storage: its files, its checkpoints, its node-local staging folders."""

    def __init__(self, uri: str | Location):
        self.location = location(uri)
        self.uri = display(self.location)

    def __str__(self) -> str:
        return self.uri

    # --- places ---
    @property
    def checkpoints(self) -> Location:
        return self.location.child(CHECKPOINTS)

    def checkpoint_location(self, step: int) -> Location:
        return self.checkpoints.child(checkpoint_dir_name(step), f"ckpt-{step:08d}.pt")

    def staging(self, rank: int = 0) -> Path:
        """This process's local working copy of the run (not emptied here: :meth:`fresh_staging`)."""
        return Path(tempfile.gettempdir()) / "varmem-runs" / uri_digest(self.uri) / f"rank-{rank}"

    def fresh_staging(self, rank: int = 0) -> Path:
        folder = self.staging(rank)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    # --- checkpoints ---
    def list_checkpoints(self) -> list[tuple[int, Location]]:
        """(step, location) of every ``checkpoints/checkpoint_N/ckpt-N.pt``, oldest first (not verified)."""
        found = []
        for rel, _ in self.checkpoints.files():
            parts = rel.split("/")
            if len(parts) == 2 and _CKPT_DIR_RE.match(parts[0]) and _CKPT_RE.match(parts[1]):
                found.append((int(_CKPT_RE.match(parts[1]).group(1)), self.checkpoints.child(*parts)))
        return sorted(found, key=lambda e: e[0])

    def newest_intact(self, *, set_aside: bool = False, using: str = "using") -> tuple[Location, dict[str, Any]] | None:
        """(location, state) of the newest checkpoint that loads and verifies; None when there is none. Newer
        corrupt ones are named in a warning (``set_aside``: renamed ``ckpt-N.pt.corrupt``); RunDirError naming
        each when none is intact."""
        bad: list[tuple[Location, str]] = []
        for step, where in reversed(self.list_checkpoints()):
            try:
                state = load_checkpoint(where)
            except CorruptCheckpoint as exc:
                bad.append((where, str(exc).replace(f"checkpoint {where.uri} ", "")))
                continue
            for corrupt, problem in bad:
                kept = corrupt
                if set_aside:
                    kept = corrupt.parent.child(corrupt.name + CORRUPT_SUFFIX)
                    try:
                        corrupt.move_to(kept)
                    except StorageError:
                        kept = corrupt
                warn(f"checkpoint {corrupt} {problem}" + (f" (kept as {kept.name})" if kept != corrupt else "")
                     + f"; {using} {where} (step {step}) instead")
            return where, state
        if bad:
            raise RunDirError(f"no intact checkpoint in {self.checkpoints}: "
                              + "; ".join(f"{w.uri} {problem}" for w, problem in bad)
                              + ": start the run again with --overwrite")
        return None

    def download_checkpoint(self, where: Location, folder: Path) -> Path:
        """``where`` (a checkpoint on the storage) copied into the local ``folder``."""
        target = folder / where.name
        where.download(target)
        return target

    def upload_checkpoint(self, local: Path, step: int) -> Location:
        """An in-process run's checkpoint, stored where Ray Train stores a Ray run's."""
        target = self.checkpoint_location(step)
        target.upload(local)
        return target

    def prune(self, keep: int) -> list[Location]:
        """Remove all but the newest ``keep`` checkpoints (Ray Train prunes only those of its current fit)."""
        removed = []
        for _, where in self.list_checkpoints()[:-keep] if keep > 0 else []:
            where.parent.delete_tree()
            removed.append(where)
        return removed

    def forget_ray_state(self) -> None:
        """Remove Ray Train's snapshot of reported checkpoints: a new fit starts without it (the driver hands
        the workers the checkpoint to resume from), so that it never refers to a checkpoint set aside or pruned."""
        self.checkpoints.child(RAY_SNAPSHOT).delete()

    # --- the other files ---
    def holds_run(self) -> bool:
        return self.location.child("config.yaml").exists() or bool(self.list_checkpoints())

    def clear(self) -> None:
        """What ``--overwrite`` removes: checkpoints (and Ray's bookkeeping), metrics, final metrics, events."""
        self.checkpoints.delete_tree()
        self.location.child(TENSORBOARD_DIR).delete_tree()
        for name in (METRICS_FILE, FINAL_FILE):
            self.location.child(name).delete()

    def pull_logs(self, staging: Path) -> list[str]:
        """``metrics.jsonl`` and the TensorBoard events into ``staging`` (a resumed run continues them)."""
        pulled = []
        metrics = self.location.child(METRICS_FILE)
        if metrics.exists():
            metrics.download(staging / METRICS_FILE)
            pulled.append(METRICS_FILE)
        for rel, _ in self.location.child(TENSORBOARD_DIR).files():
            self.location.child(TENSORBOARD_DIR, *rel.split("/")).download(staging / TENSORBOARD_DIR / rel)
            pulled.append(f"{TENSORBOARD_DIR}/{rel}")
        return pulled

    def read_final(self) -> dict[str, Any]:
        try:
            return json.loads(self.location.child(FINAL_FILE).read_bytes())
        except ValueError as exc:
            raise RunDirError(f"{self.location.child(FINAL_FILE)}: not readable JSON ({exc})") from None


class RemoteSync:
    """Rank 0's uploads of a run's local working copy (``staging``) to its :class:`RemoteRun`: what changed
    of metrics.jsonl and the TensorBoard events (:meth:`push`; throttled by :meth:`maybe_push`), the config
    as the user gave it (run.out = the URI), and at the end final_metrics.json with the storage's names."""

    def __init__(self, run: RemoteRun, staging: Path, config_yaml: str):
        self.run, self.staging, self.config_yaml = run, staging, config_yaml
        self._pushed: dict[str, tuple[int, int]] = {}
        self._last = 0.0
        self.pushes = 0

    def push_config(self) -> None:
        self.run.location.child("config.yaml").write_text(self.config_yaml)

    def push(self) -> None:
        """Upload metrics.jsonl and the TensorBoard event files that changed since the last push."""
        files = [self.staging / METRICS_FILE] + sorted((self.staging / TENSORBOARD_DIR).rglob("*"))
        for path in files:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_file():
                continue
            rel = path.relative_to(self.staging).as_posix()
            if self._pushed.get(rel) == (st.st_size, st.st_mtime_ns):
                continue
            self.run.location.child(*rel.split("/")).upload(path)
            self._pushed[rel] = (st.st_size, st.st_mtime_ns)
        self._last = time.monotonic()
        self.pushes += 1

    def maybe_push(self) -> None:
        if time.monotonic() - self._last >= PUSH_EVERY_S:
            self.push()

    def checkpoint(self, local: Path | None, step: int | None = None) -> None:
        """An in-process run's checkpoint: the logs so far, then the checkpoint file, then the older ones pruned."""
        self.push()
        if local is not None:
            self.run.upload_checkpoint(Path(local), step if step is not None else _step_of(local))

    def finish(self, final: dict[str, Any]) -> dict[str, Any]:
        """The last uploads and ``final_metrics.json`` (run_dir and checkpoint named on the storage)."""
        self.push()
        final = dict(final, run_dir=self.run.uri)
        if final.get("checkpoint"):
            final["checkpoint"] = self.run.checkpoint_location(_step_of(final["checkpoint"])).uri
        self.run.location.child(FINAL_FILE).write_text(json.dumps(final, indent=2) + "\n")
        return final


def _step_of(path: str | Path) -> int:
    m = _CKPT_RE.match(Path(str(path)).name)
    if not m:
        raise ConfigError(f"{path} is not named like a checkpoint (ckpt-<step>.pt)")
    return int(m.group(1))


def train_remote(config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                 report=None, report_logs: bool = False) -> dict[str, Any]:
    """``varmem train --out RUN_URI`` in this process: the training loop in a local working copy, its logs and
    checkpoints uploaded to the storage as a Ray run's are (checkpoints at ``checkpoints/checkpoint_N/``), so
    that ``--resume`` (here or with ``--workers``) and ``varmem eval`` read either the same way.

    ``report(metrics, checkpoint)``: called after each checkpoint is uploaded (``checkpoint``: its file in the
    working copy, :meth:`RemoteRun.staging`) and, with ``report_logs``, at each log line (``None``) — a Tune
    trial's reports (distributed/search/trial.py)."""
    from varmem.distributed.resume import check_run
    from varmem.distributed.rundir import CHECKPOINT_DIR
    from varmem.distributed.train_loop import TrainContext, train

    config = config.resolve_paths()
    _, source, _ = check_run(config, resume=resume, overwrite=overwrite)  # nothing written (but a set-aside)
    run = RemoteRun(config.run.out)
    if overwrite and source is None:
        run.clear()
    staging = run.fresh_staging(0)
    if source is not None:  # the loop resumes from the newest checkpoint of its working copy: this one
        run.download_checkpoint(location(source), staging / CHECKPOINT_DIR)
        run.pull_logs(staging)
    sync = RemoteSync(run, staging, config.to_yaml())
    sync.push_config()

    def log(line: str) -> None:
        print(line, flush=True)
        sync.maybe_push()

    def on_report(metrics: dict[str, Any], checkpoint) -> None:
        if checkpoint is not None or not report_logs:  # a checkpoint's report: the logs, then the checkpoint
            sync.checkpoint(checkpoint)
        if report is not None:
            report(metrics, checkpoint)

    context = TrainContext(quiet=quiet, log=log, report_logs=report_logs, report=on_report)
    local = config.with_overrides([f"run.out={json.dumps(str(staging))}"])
    final = train(local, resume=source is not None, context=context)
    final = sync.finish(final)
    run.prune(config.train.keep_checkpoints)
    return final
