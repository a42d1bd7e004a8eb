"""Whether and from where a run starts: a fresh run in an empty run directory, or a resumed one from a
checkpoint whose config differs only in what does not change the trajectory (:data:`RESUMABLE_CHANGES`).
Checked before anything is written, by :func:`varmem.distributed.train_loop.train` and by the Ray driver
before any worker starts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.run import open_dataset
from varmem.distributed.rundir import CHECKPOINT_DIR, list_checkpoints, load_checkpoint, newest_intact_checkpoint
from varmem.episodes.dataset import Dataset
from varmem.episodes.storage import is_remote

# Fields that may change when a run is resumed: they do not change the training trajectory.
RESUMABLE_CHANGES = (
    "train.steps", "train.log_every", "train.val_every", "train.val_episodes", "train.val_samples", "train.val_seed",
    "train.eval_batch", "train.chunk", "train.checkpoint_every", "train.keep_checkpoints", "train.device", "train.threads",
    "train.cpu_budget_s",  # a larger budget extends a finished run (--resume --cpu-budget S)
    "data.dir", "data.verify_shards", "run.out", "run.tensorboard",
    "storage.s3_endpoint", "storage.cache_dir", "storage.cache_bytes",
)


def check_run(config: RunConfig, *, resume: bool | str | Path = False,
              overwrite: bool = False) -> tuple[Dataset, Path | None, dict[str, Any] | None]:
    """The checks of a run that need no writes: the dataset (image size, splits able to supply the
    episodes), the checkpoint to resume from and its compatibility, a fresh run's empty run directory.
    Returns (dataset, checkpoint path, checkpoint state); both None for a fresh run. The Ray driver
    calls it before any worker starts; ``train`` calls it first.

    ``resume=True`` resumes from the newest *intact* checkpoint: newer ones that fail their sha256 (or
    are truncated, empty) are renamed ``ckpt-N.pt.corrupt`` with a warning naming them and the one used
    (the only write here: nothing else in the run directory changes before the run starts).

    A run directory on object storage (``run.out`` a URI, distributed/remote_run.py): its checkpoints are
    those under ``RUN_URI/checkpoints/``, and the checkpoint path returned is a
    :class:`~varmem.episodes.storage.Location` there."""
    config = config.resolve_paths()
    dataset = open_dataset(config)
    if is_remote(config.run.out):
        return (dataset, *_check_remote_run(config, resume=resume, overwrite=overwrite))
    run_dir = Path(config.run.out)
    if resume:
        if resume is True:
            found = newest_intact_checkpoint(run_dir, set_aside=True, using="resuming from")
            if found is None:
                raise ConfigError(f"nothing to resume: {run_dir / CHECKPOINT_DIR} holds no ckpt-*.pt "
                                  "(start the run without --resume)")
            source, ckpt = found
        else:
            source = Path(resume)
            ckpt = load_checkpoint(source)
        check_resumable(config, ckpt, source)
        return dataset, source, ckpt
    if list_checkpoints(run_dir) and not overwrite:
        last = list_checkpoints(run_dir)[-1][0]
        raise ConfigError(f"run.out {run_dir} already holds checkpoints (up to step {last}): "
                          "pass --resume to continue that run or --overwrite to start it again")
    return dataset, None, None


def _check_remote_run(config: RunConfig, *, resume: bool | str | Path,
                      overwrite: bool) -> tuple[Any, dict[str, Any] | None]:
    from varmem.distributed.remote_run import RemoteRun

    run = RemoteRun(config.run.out)
    if resume:
        if resume is True:
            found = run.newest_intact(set_aside=True, using="resuming from")
            if found is None:
                raise ConfigError(f"nothing to resume: {run.checkpoints} holds no checkpoint_N/ckpt-N.pt "
                                  "(start the run without --resume)")
            source, ckpt = found
        else:
            source, ckpt = resume, load_checkpoint(resume)
        check_resumable(config, ckpt, source)
        return source, ckpt
    found = run.list_checkpoints()
    if found and not overwrite:
        raise ConfigError(f"run.out {run} already holds checkpoints (up to step {found[-1][0]}): "
                          "pass --resume to continue that run or --overwrite to start it again")
    return None, None


def check_resumable(config: RunConfig, ckpt: dict[str, Any], source: Path) -> None:
    """A resumed run must follow the same trajectory: only the fields in RESUMABLE_CHANGES may differ."""
    try:
        saved = RunConfig.from_dict(ckpt["config"], legacy=True)
    except ConfigError as exc:
        raise ConfigError(f"checkpoint {source} holds a config this version cannot read: {exc}") from None
    changed = [d for d in saved.differences(config) if d.split(":")[0] not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(f"cannot resume from {source}: the config differs in {'; '.join(changed)} "
                          f"(only {', '.join(RESUMABLE_CHANGES)} may change; start a new run directory instead)")
    if int(ckpt["step"]) > config.train.steps:
        raise ConfigError(f"checkpoint {source} is at step {ckpt['step']}, past train.steps={config.train.steps}")
