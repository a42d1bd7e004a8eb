"""Pretrain, then fine-tune: a fresh run whose model starts from another run's weights (``train.init_from``,
``varmem train --init-from RUN_DIR[/checkpoints/ckpt-N.pt]``)::

    varmem train --config configs/vma_strokes.yaml --out runs/pre                       # pretrain on strokes
    varmem train --config ft.yaml --init-from runs/pre --out runs/ft                    # fine-tune on Omniglot

Only the model's parameters and buffers come from the source checkpoint. The optimizer is fresh (Adam's moments
empty), the step counter starts at 0, and the episodes, the noise and everything else follow the new config: the
data and episode sections may differ freely (another dataset at the same image size), the model section must build
the same parameter shapes. Otherwise a ConfigError names the first parameter that differs, in the order of this
run's model: its name and both shapes, or the one that only one side has.

The source is a run directory (its newest intact checkpoint, :func:`~varmem.distributed.rundir.newest_intact_checkpoint`:
a corrupt newer one is skipped with a warning, never set aside: the source run is not ours to change), one
checkpoint file, or a URI of either on object storage (``s3://bucket/runs/pre``: distributed/remote_run.py's
``checkpoints/checkpoint_N/ckpt-N.pt`` layout). :func:`pin` resolves it once, before the run starts, to the exact
file and its sha256 (of the file's bytes, as ``sha256sum`` prints it), and the run records that::

    train:
      init_from: /home/me/runs/pre/checkpoints/ckpt-00020000.pt#sha256=5f3c…   (RUN_DIR/config.yaml)

so the run is reproducible from its config.yaml alone: a pinned source is loaded only if its bytes still hash to
the recorded value (a ConfigError otherwise), and a run directory that has since trained further is not re-read.
``varmem train`` pins before any process trains (every Ray worker then reads the same file); the training loop
pins a value that is not yet pinned itself (the Python API; a relative path is then taken from the working
directory of the process that trains).

``--resume`` wins: a resumed run continues from its own checkpoint, and keeps the record of the source it
started from (:func:`for_resume`), whatever ``--init-from`` or the config file now say. A Ray worker group
restarted after a failure resumes as well; a fresh Ray fit loads the source on every rank (then rank 0's
parameters are broadcast, as always).
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from varmem.distributed.config import CONFIG_FILE, ConfigError, RunConfig

FIELD = "train.init_from"
PIN = "#sha256="  # PATH#sha256=HEX: the checkpoint a run started from and the sha256 of its bytes
_HEX = frozenset("0123456789abcdef")
_COMPILED = "_orig_mod."  # what torch.compile(module) adds to the names in a parent's state_dict


@dataclass(frozen=True)
class InitSource:
    """A checkpoint a run starts from: where it is (a path, or a URI on object storage), its sha256, its state."""

    where: str
    sha256: str
    state: dict[str, Any]

    @property
    def pinned(self) -> str:
        return f"{self.where}{PIN}{self.sha256}"

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def describe(self) -> str:
        """``ckpt-00000200.pt (step 200 of a 'vma' run; sha256 5f3c…)``: for progress lines and errors."""
        model = (self.state.get("config") or {}).get("model") or {}
        family = f" of a {model.get('name', 'vma')!r} run" if isinstance(model, dict) else ""
        return f"{self.where} (step {self.step}{family}; sha256 {self.sha256[:12]}…)"


def split_pin(spec: str) -> tuple[str, str | None]:
    """``PATH#sha256=HEX`` → (PATH, HEX); anything else → (spec, None). ConfigError for a malformed hash."""
    where, mark, digest = spec.rpartition(PIN)
    if not mark:
        return spec, None
    if len(digest) != 64 or not set(digest) <= _HEX or not where:
        raise ConfigError(f"{FIELD} {spec!r}: expected PATH{PIN}<64 lowercase hex digits> (the form a run records), "
                          "or a run directory or checkpoint without a hash")
    return where, digest


def pin(config: RunConfig) -> tuple[RunConfig, InitSource | None]:
    """``config`` with ``train.init_from`` resolved to the exact checkpoint and its sha256 (unchanged when it is
    already pinned, after checking that the pinned file still has that hash), and that source; (config, None)
    when ``init_from`` is empty. Reads the checkpoint and verifies it (its own sha256 record and CRC-32s);
    writes nothing. ConfigError naming the field and the path for a missing source, a directory without
    checkpoints, a file that is not a checkpoint, or a source inside this run's own directory."""
    if not config.train.init_from:
        return config, None
    source = load(config.train.init_from, config)
    _refuse_own_run_dir(source, config)
    if source.pinned != config.train.init_from:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=source.pinned))
    return config, source


def load(spec: str, config: RunConfig) -> InitSource:
    """The source a ``train.init_from`` value names, read and verified (see :func:`pin`)."""
    from varmem.episodes.storage import is_remote

    where, digest = split_pin(spec)
    if is_remote(where):
        config.storage.apply()  # the run's S3 endpoint
        file, data = _read_remote(where, pinned=digest is not None)
    else:
        file, data = _read_local(where, pinned=digest is not None)
    actual = hashlib.sha256(data).hexdigest()
    if digest is not None and actual != digest:
        raise ConfigError(f"{FIELD}: {file} has changed since the run recorded it: its bytes hash to sha256 {actual[:16]}…, "
                          f"the config records {digest[:16]}… (restore that file, or start a new run with --init-from)")
    from varmem.distributed.rundir import CorruptCheckpoint, checkpoint_from_bytes

    try:
        state = checkpoint_from_bytes(data, file, file.rsplit("/", 1)[0])
    except CorruptCheckpoint as exc:
        raise ConfigError(f"{FIELD}: {exc}") from None
    return InitSource(where=file, sha256=actual, state=state)


def _read_local(where: str, *, pinned: bool) -> tuple[str, bytes]:
    """(the checkpoint file's absolute path, its bytes) of a local run directory or checkpoint file."""
    from varmem.distributed.rundir import CHECKPOINT_DIR, newest_intact_checkpoint
    from varmem.episodes.storage import is_uri, location

    path = location(where).local_path if is_uri(where) else Path(where).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.exists():
        advice = ("the checkpoint this run started from: restore it" if pinned
                  else "give a run directory, or one of its checkpoints/ckpt-N.pt files, or a URI of either")
        raise ConfigError(f"{FIELD}: {where} does not exist ({advice})")
    if path.is_dir():
        if pinned:
            raise ConfigError(f"{FIELD}: {where} is a directory, but a recorded source ({PIN}...) is a checkpoint file")
        found = newest_intact_checkpoint(path, using="initializing from")
        if found is None:
            why = ("the run has not reached its first checkpoint (train.checkpoint_every)" if (path / CONFIG_FILE).is_file()
                   else "not a varmem run directory")
            raise ConfigError(f"{FIELD}: {path} holds no {CHECKPOINT_DIR}/ckpt-*.pt: {why}")
        path = found[0]
    path = path.resolve()
    try:
        return str(path), path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{FIELD}: {path} cannot be read: {exc.strerror or exc}") from None


def _read_remote(where: str, *, pinned: bool) -> tuple[str, bytes]:
    """(the checkpoint's URI, its bytes) of a run directory or checkpoint on object storage."""
    from varmem.distributed.remote_run import RemoteRun
    from varmem.episodes.storage import location

    place = location(where)
    if not place.is_file():
        if pinned or not place.is_dir():
            raise ConfigError(f"{FIELD}: {place} does not exist" + (" (the checkpoint this run started from: restore it)"
                              if pinned else " (give a run directory, or one of its checkpoints, on the storage)"))
        found = RemoteRun(place).newest_intact(using="initializing from")
        if found is None:
            raise ConfigError(f"{FIELD}: {place}/checkpoints holds no checkpoint_N/ckpt-N.pt: not a varmem run directory, "
                              "or the run has not reached its first checkpoint")
        place = found[0]
    return place.uri, place.read_bytes()


def _refuse_own_run_dir(source: InitSource, config: RunConfig) -> None:
    """A source inside this run's own directory would be cleared by ``--overwrite`` and pruned by checkpointing."""
    from varmem.episodes.storage import is_remote

    if is_remote(source.where) or is_remote(config.run.out):
        same = source.where.startswith(config.run.out.rstrip("/") + "/")
    else:
        out = Path(config.run.out).expanduser().resolve()
        same = out in Path(source.where).parents
    if same:
        raise ConfigError(f"{FIELD}: {source.where} lies inside this run's own directory ({config.run.out}), which a new run "
                          "clears: copy the checkpoint elsewhere, or train into another --out")


# --- the model --------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return name.replace(_COMPILED, "")


def check_fits(model, source: InitSource, config: RunConfig, image_shape: tuple[int, int]) -> dict[str, Any]:
    """The source's tensors under this model's state_dict names, after checking that every name and shape
    matches; ConfigError naming the first that does not (in this model's order, then the source's extra names)."""
    ours = model.state_dict()
    theirs = {_canonical(k): v for k, v in source.state["model"].items()}
    problem = None
    for name, tensor in ours.items():
        other = theirs.get(_canonical(name))
        if other is None:
            problem = f"this run's model has {name} {list(tensor.shape)}, the source has no such parameter"
        elif tuple(other.shape) != tuple(tensor.shape):
            problem = f"{name} is {list(other.shape)} in the source and {list(tensor.shape)} here"
        if problem:
            break
    if problem is None:
        known = {_canonical(k) for k in ours}
        extra = [k for k in theirs if k not in known]
        if extra:
            problem = f"the source has {extra[0]} {list(theirs[extra[0]].shape)}, which this run's model lacks"
    if problem is not None:
        raise ConfigError(f"{FIELD}: the model of {source.where} does not fit this run's model: {problem}"
                          f"{_hints(source, config, image_shape)}; the model section must build the same parameter "
                          "shapes as the source's (the data section may differ)")
    return {name: theirs[_canonical(name)] for name in ours}


def _hints(source: InitSource, config: RunConfig, image_shape: tuple[int, int]) -> str:
    """`` (the model sections differ in model.channels: 32 -> 64; ...)``: why the shapes may differ."""
    saved = (source.state.get("config") or {}).get("model")
    hints = []
    if isinstance(saved, dict):
        ours = config.model.to_dict()
        if saved.get("name", "vma") != ours.get("name"):
            hints.append(f"the source is a {saved.get('name', 'vma')!r} model, this run's a {ours.get('name')!r}")
        else:
            diffs = [f"model.{k}: {saved.get(k)!r} -> {ours.get(k)!r}" for k in list(ours) + [k for k in saved if k not in ours]
                     if saved.get(k) != ours.get(k)]
            if diffs:
                hints.append("the model sections differ in " + "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else ""))
    theirs = source.state.get("image_shape")
    if theirs is not None and tuple(theirs) != tuple(image_shape):
        (h, w), (H, W) = theirs, image_shape
        hints.append(f"the source was trained on {h}×{w} images, this run's are {H}×{W}")
    return f" ({'; '.join(hints)})" if hints else ""


def initialize(model, config: RunConfig, image_shape: tuple[int, int],
               emit: Callable[[str], None] | None = None) -> RunConfig:
    """Load the source's weights into ``model`` (a freshly built one, before any step) after checking that
    they fit; returns ``config`` with its source pinned (what the run directory records). Called by the
    training loop for a fresh run with ``train.init_from`` set; the optimizer and the step are the loop's own."""
    config, source = pin(config)
    if source is None:
        return config
    model.load_state_dict(check_fits(model, source, config, image_shape))
    say = emit or (lambda line: None)
    say(f"initialized the model from {source.describe()}: a fresh optimizer, from step 0")
    theirs = source.state.get("image_shape")
    if theirs is not None and tuple(theirs) != tuple(image_shape):
        say(f"varmem: warning: {FIELD}: the source was trained on {theirs[0]}×{theirs[1]} images and this run's are "
            f"{image_shape[0]}×{image_shape[1]}: its weights fit, but they learned another image size")
    return config


def check_before_launch(config: RunConfig, source: InitSource) -> None:
    """For a driver that hands the training to other processes (Ray Train): the source fits the config's
    model, built at ``data.image_size`` (else the source's image size), before any worker starts."""
    from varmem.distributed.run import build_model

    size = config.data.image_size
    shape = (size, size) if size else tuple(int(n) for n in source.state.get("image_shape") or ())
    if len(shape) == 2:
        check_fits(build_model(config, shape), source, config, shape)


# --- resuming ---------------------------------------------------------------------------------


def for_resume(config: RunConfig) -> RunConfig:
    """``--resume`` wins over ``--init-from``: ``config`` with the ``train.init_from`` that the run being resumed
    recorded (its ``RUN_DIR/config.yaml``), so that the resume check sees no change and the run keeps the record
    of where it started. A different value given now is not used (a note on stderr says so). A run directory
    without a readable config.yaml: ``config`` unchanged (the resume's own checks say what is wrong)."""
    own = _recorded(config)
    if own is None or own == config.train.init_from:
        return config
    if config.train.init_from:
        print(f"varmem: note: --resume continues {config.run.out} from its own checkpoint: {FIELD} "
              f"{config.train.init_from} is not used" + (f" (the run started from {own})" if own else ""),
              file=sys.stderr, flush=True)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=own))


def _recorded(config: RunConfig) -> str | None:
    """The ``train.init_from`` in the run directory's config.yaml ("" when it has none); None without one."""
    from varmem.distributed.config import parse_yaml
    from varmem.episodes.storage import StorageError, is_remote, location

    try:
        if is_remote(config.run.out):
            config.storage.apply()
            where = location(config.run.out).child(CONFIG_FILE)
            if not where.is_file():
                return None
            text = where.read_text()
        else:
            path = Path(config.run.out).expanduser() / CONFIG_FILE
            if not path.is_file():
                return None
            text = path.read_text(encoding="utf-8")
        raw = parse_yaml(text, str(CONFIG_FILE))
    except (OSError, UnicodeDecodeError, ConfigError, StorageError):
        return None
    train = raw.get("train") if isinstance(raw, dict) else None
    value = train.get("init_from", "") if isinstance(train, dict) else ""
    return value if isinstance(value, str) else None
