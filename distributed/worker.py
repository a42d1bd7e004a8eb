"""The Ray Train worker: the single-process training loop with a DDP context.

:func:`train_worker` is what ``TorchTrainer`` runs on every worker: a pure function of its
``loop_config`` (the run config as a dict, resolved to absolute paths by the driver; ``quiet``;
``report_logs``), of Ray's checkpoint and of the run directory. It builds a :class:`RayTrainContext` and calls
:func:`varmem.distributed.train_loop.train`, the same function ``varmem train --workers 0`` calls:

* rank, world size and device come from ``ray.train``; the process group (gloo on CPU, nccl
  on GPU) is the one ``TorchTrainer`` set up;
* gradients are all-reduced (mean) after backward as one flat buffer; the models are called
  through ``objective``, not ``forward``, so ``DistributedDataParallel``'s hooks would not fire;
* logged values are averaged over ranks; every rank's RNG state is gathered into the checkpoint;
* every ``checkpoint_every`` steps rank 0 writes ``RUN_DIR/checkpoints/ckpt-N.pt`` and hands the
  same file to ``ray.train.report`` (every rank reports; only rank 0 passes a checkpoint), which
  stores it in Ray's storage, ``RUN_DIR/ray/fit-*/checkpoint_0000000N/``: as a hard link to the file
  (``checkpoint_upload_fn``: the bytes are on disk once; a copy where a link cannot be made);
* on start, the newer of ``ray.train.get_checkpoint()`` (the driver's ``--resume`` checkpoint, or
  Ray's latest after a worker failure) and the newest ``RUN_DIR/checkpoints/ckpt-N.pt``: a worker
  that dies right after a checkpoint can take its last report with it before Ray's controller
  collects it (seen here: a kill one step after the step-2 checkpoint left Ray with none), while
  rank 0's file is on disk. The run directory must be on a filesystem every worker sees.

A run directory on object storage (``run.out`` a URI: distributed/remote_run.py) is a node-local working
copy for the training loop instead, and the storage holds the run: rank 0 uploads metrics.jsonl and the
TensorBoard events (at checkpoints, at the end, and every ``PUSH_EVERY_S`` while it logs), Ray Train
stores each checkpoint once, in ``RUN_URI/checkpoints/`` (the driver's ``RunConfig(storage_path=RUN_URI)``).
On start every rank takes the newer of Ray's latest checkpoint and the driver's ``--resume`` one, both
read from the storage, so that ranks on different nodes start from the same step.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from varmem.distributed.rundir import CHECKPOINT_DIR, checkpoint_step, list_checkpoints, newest_intact_checkpoint
from varmem.distributed.train_loop import TrainContext, train

STAGING_PREFIX = ".ray-staging-"


class RayTrainContext(TrainContext):
    """A Ray Train worker: world rank and size from ``ray.train``, DDP hooks through ``torch.distributed``."""

    def __init__(self, *, quiet: bool = False, report_logs: bool = False, sync=None, ray_storage: str | None = None):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        device = ray.train.torch.get_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl's object collectives use the current device
        super().__init__(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), device=device,
                         report=self._report, quiet=quiet)
        self._distributed = dist.is_available() and dist.is_initialized() and self.world_size > 1
        # Every ray.train.report synchronises the workers through an actor and, its result queue holding
        # one report, waits until Ray's controller has taken the previous one (the controller polls every
        # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S; Ray 2.60's train/v2/_internal/execution/context.py): a report
        # per log line stalls a fast model's steps. Checkpoints are always reported; log lines only when
        # asked (Ray Tune's schedulers want them).
        self.report_logs = report_logs
        self.sync = sync  # rank 0 of a run on object storage: a RemoteSync of the local working copy
        self.ray_storage = ray_storage  # a local run: Ray's folder of this fit's checkpoints (RUN_DIR/ray/fit-*)

    def emit(self, line: str) -> None:
        super().emit(line)
        if self.sync is not None:  # the run's logs reach the storage while it trains, not only at checkpoints
            self.sync.maybe_push()

    # --- DDP hooks ---
    def prepare_model(self, model):
        """Broadcast rank 0's parameters and buffers (every rank built the same model from the same seed
        and loaded the same checkpoint: a safety net against any rank-dependent initialisation)."""
        if self._distributed:
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    dist.broadcast(t.data, src=0)
        return model

    def reduce_gradients(self, model) -> None:
        """Mean of every gradient over ranks, as one flat all-reduce (the models are small: a few MB)."""
        if not self._distributed:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        # the same layout on every rank: zeros for a parameter this rank did not use, and one flag per
        # parameter (1 = had a gradient) so that a parameter no rank used keeps grad None, as in-process
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                 for p in params]
        used = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat(grads + [used])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat[: flat.numel() - len(params)] /= self.world_size
        used = flat[flat.numel() - len(params) :].tolist()
        offset = 0
        for p, flag in zip(params, used):
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p) if flag > 0 else None  # views into the reduced buffer
            offset += n

    def reduce_metrics(self, values: torch.Tensor) -> torch.Tensor:
        if not self._distributed:
            return values
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def gather(self, value: Any) -> list[Any]:
        if not self._distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    # --- reports ---
    def _report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """``ray.train.report`` on every rank; rank 0 passes its checkpoint file (hard-linked into a
        staging directory next to it; Ray copies the directory into its storage)."""
        import ray.train

        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        if checkpoint is None:
            if self.sync is not None and self.report_logs:
                # a Tune trial's controller reads the run's metrics.jsonl on the storage at each report
                # (distributed/search/trial.py): the validations so far go up first
                self.sync.push()
            ray.train.report(metrics, checkpoint=None)
            return
        checkpoint = Path(checkpoint)
        if self.sync is not None:
            self.sync.push()  # the logs up to this checkpoint, before Ray stores it
        staging = checkpoint.parent / f"{STAGING_PREFIX}{checkpoint.stem}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _link_or_copy(checkpoint, staging / checkpoint.name)
            step = int(metrics.get("step", 0))
            upload = {"checkpoint_upload_fn": link_into(Path(self.ray_storage))} if self.ray_storage else {}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)),
                             checkpoint_dir_name=f"checkpoint_{step:08d}", **upload)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def link_into(folder: Path):
    """Ray Train's ``checkpoint_upload_fn`` for a local run: the checkpoint directory's files hard-linked into
    ``folder/<checkpoint_dir_name>/`` (what ``pyarrow.fs.copy_files`` would copy there), so that Ray's
    checkpoint and rank 0's ``RUN_DIR/checkpoints/ckpt-N.pt`` are one file on disk. Both names stay: the
    run directory's for ``--resume``, ``varmem eval`` and old tools, Ray's for ``ray.train.get_checkpoint()``
    after a worker failure; the bytes go when both are pruned. A checkpoint is never written in place (an
    atomic rename replaces a name), so a linked file never changes."""
    import ray.train

    def upload(checkpoint, name: str):
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        for item in Path(checkpoint.path).iterdir():
            # a temporary name, then a rename: a name that exists (a retried step) is replaced, never written
            # through (it may be a link to an older file)
            tmp = target / f".{item.name}.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            _link_or_copy(item, tmp)
            os.replace(tmp, target / item.name)
        return ray.train.Checkpoint.from_directory(str(target))
    return upload


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def checkpoint_file(directory: str | Path) -> Path:
    """The ``ckpt-*.pt`` inside a Ray checkpoint directory."""
    found = sorted(Path(directory).glob("ckpt-*.pt"))
    if len(found) != 1:
        raise RuntimeError(f"Ray checkpoint {directory} holds {len(found)} ckpt-*.pt files, expected 1")
    return found[0]


def quiet_ray_train_logs() -> None:
    """Ray Train 2.60 logs every report at INFO through a logger named by its file path (so
    ``LoggingConfig(log_level)`` does not reach it): one line per rank per log step. Keep warnings."""
    try:
        from ray.train.v2._internal.execution import context as execution_context
    except ImportError:  # another Ray version: nothing to quieten
        return
    logging.getLogger(execution_context.__file__).setLevel(logging.WARNING)


def train_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The function every Ray Train worker runs (see the module docstring); returns the final metrics."""
    import ray.train

    from varmem.distributed.config import RunConfig
    from varmem.models.registry import load_plugins

    from varmem.episodes.storage import is_remote

    quiet_ray_train_logs()
    load_plugins(loop_config.get("plugins", ()))  # the driver's --plugin families, before the config names one
    config = RunConfig.from_dict(loop_config["config"])
    config.storage.apply()  # the S3 endpoint and this node's shard cache
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    context = RayTrainContext(quiet=bool(loop_config.get("quiet")), report_logs=bool(loop_config.get("report_logs")),
                              ray_storage=loop_config.get("ray_storage"))
    if is_remote(config.run.out):
        return _train_remote(config, context, loop_config.get("resume_from"))
    run_dir = Path(config.run.out)
    if context.is_main:
        for stale in (run_dir / CHECKPOINT_DIR).glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    # The driver left RUN_DIR/checkpoints empty for a fresh run (or cleared it for --overwrite): whatever
    # is there now was written by this fit (an attempt that failed) or is the --resume checkpoint.
    restored = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        ray_file = checkpoint_file(stack.enter_context(restored.as_directory())) if restored is not None else None
        source = resume_source(run_dir, ray_file)
        if source is not None:
            context.emit(f"resuming from {source}")
        return train(config, resume=source or False, context=context)


def resume_source(run_dir: Path, ray_file: Path | None) -> Path | None:
    """The checkpoint a worker starts from: the newer of Ray's (``ray.train.get_checkpoint()``) and the
    run directory's newest intact one (a corrupt newer file, e.g. written when a worker died, is set aside
    with a warning); on a tie the run directory's; None for a fresh start."""
    intact = newest_intact_checkpoint(run_dir, set_aside=True, using="resuming from") if list_checkpoints(run_dir) else None
    candidates = [c for c in (intact[0] if intact else None, ray_file) if c is not None]
    return max(candidates, key=checkpoint_step) if candidates else None


def _train_remote(config, context: RayTrainContext, resume_from: str | None) -> dict[str, Any]:
    """A worker of a run on object storage (see the module docstring): the loop trains in a fresh node-local
    working copy, from the newer of Ray's latest checkpoint and the driver's ``resume_from`` (a URI)."""
    import dataclasses

    import ray.train

    from varmem.distributed.remote_run import RemoteRun, RemoteSync
    from varmem.distributed.rundir import CorruptCheckpoint, load_checkpoint

    run = RemoteRun(config.run.out)
    staging = run.fresh_staging(context.rank)
    local = dataclasses.replace(config, run=dataclasses.replace(config.run, out=str(staging)))
    restored = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        candidates = []
        if restored is not None:
            candidates.append(checkpoint_file(stack.enter_context(restored.as_directory())))
        if resume_from:
            incoming = staging.parent / f"incoming-rank-{context.rank}"
            shutil.rmtree(incoming, ignore_errors=True)
            incoming.mkdir(parents=True)
            stack.callback(shutil.rmtree, incoming, True)
            from varmem.episodes.storage import location

            candidates.append(run.download_checkpoint(location(resume_from), incoming))
        source = None
        for candidate in sorted(candidates, key=checkpoint_step, reverse=True):
            try:
                load_checkpoint(candidate)  # the same bytes on every rank: every rank makes the same choice
            except CorruptCheckpoint as exc:
                context.emit(f"varmem: warning: {exc}; trying an older checkpoint")
                continue
            source = candidate
            break
        if context.is_main:
            context.sync = RemoteSync(run, staging, config.to_yaml())
            if source is not None:
                run.pull_logs(staging)  # cut at the checkpoint by the loop, as a local resume does
            context.sync.push_config()
            context.emit(f"run directory {run.uri} (working copy {staging})"
                         + (f"; resuming from step {checkpoint_step(source)}" if source is not None else ""))
        final = train(local, resume=source or False, context=context)
        if context.is_main:
            final = context.sync.finish(final)
        return final
