"""The run directory: its files, atomic checkpoints and the metrics log.

    RUN_DIR/config.yaml              the full config, every default filled in
    RUN_DIR/checkpoints/ckpt-00001000.pt
    RUN_DIR/metrics.jsonl            one JSON object per log line ("kind": "train" | "val")
    RUN_DIR/final_metrics.json       written at the end (atomically)
    RUN_DIR/tensorboard/             TensorBoard events (``run.tensorboard``)

A checkpoint is a ``torch.save`` zip archive (``torch.load(path, weights_only=True)`` reads it) with one
more record, ``<archive>/varmem-sha256``: the sha256 of every other record (name, length, bytes), so the
hash travels with the file wherever it is copied (Ray's and Tune's copies included). Loading checks it
(and every record's CRC-32): a flipped byte, a truncated or an empty file is a :class:`CorruptCheckpoint`.
Resuming or evaluating a run then falls back to its newest intact checkpoint, with a warning naming both
(:func:`newest_intact_checkpoint`); a checkpoint written before the hash existed loads with a warning.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from varmem.distributed.config import ConfigError, RunDirError, atomic_write_text
from varmem.distributed.metrics import METRICS_FILE, parse_rows, read_metrics  # noqa: F401  (re-exported)
from varmem.episodes.files import atomic_write

CHECKPOINT_DIR = "checkpoints"
FINAL_FILE = "final_metrics.json"
CHECKPOINT_FORMAT = 1
HASH_RECORD = "varmem-sha256"  # the record of a checkpoint's archive that holds the sha256 of the others
CORRUPT_SUFFIX = ".corrupt"  # a corrupt checkpoint set aside by a resume: ckpt-00000008.pt.corrupt
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")

TENSORBOARD_DIR = "tensorboard"


def warn(message: str) -> None:
    """A ``varmem: warning: ...`` line on stderr: something was wrong and the command goes on (saying how)."""
    print(f"varmem: warning: {message}", file=sys.stderr, flush=True)


class CorruptCheckpoint(RunDirError):
    """A checkpoint file that cannot be trusted: empty, truncated, a record whose CRC-32 or the archive's
    sha256 does not match, or not a varmem checkpoint at all."""


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in ``run_dir``, oldest first (named so; not yet verified)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint file by name (not verified: see :func:`newest_intact_checkpoint`)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _records_digest(archive: zipfile.ZipFile) -> str:
    """sha256 over every record but the hash record: name, length, bytes (reading checks each CRC-32)."""
    digest = hashlib.sha256()
    for info in archive.infolist():
        if info.filename.rsplit("/", 1)[-1] == HASH_RECORD:
            continue
        data = archive.read(info)
        digest.update(info.filename.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def serialize_checkpoint(state: dict[str, Any]) -> bytes:
    """``torch.save(state)`` as bytes, with the sha256 record added to its archive."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer, "a") as archive:
        prefix = archive.namelist()[0].split("/", 1)[0]
        archive.writestr(f"{prefix}/{HASH_RECORD}", _records_digest(archive))
    return buffer.getvalue()


def verify_checkpoint_bytes(data: bytes) -> tuple[str | None, bool]:
    """(what is wrong with a checkpoint's bytes or None, whether they carry a sha256 record)."""
    if not data:
        return "the file is empty (0 bytes)", False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            recorded = [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == HASH_RECORD]
            actual = _records_digest(archive)
            if not recorded:
                return None, False
            stored = archive.read(recorded[0]).decode("ascii", errors="replace").strip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        reason = str(exc).split("\n")[0]
        if isinstance(exc, zipfile.BadZipFile) and "Bad CRC-32" in reason:
            return f"a record fails its CRC-32 check ({reason})", True
        return f"truncated or not a checkpoint archive ({len(data):,} bytes; {reason})", False
    if stored != actual:
        return f"its contents hash to sha256 {actual[:16]}…, the checkpoint records {stored[:16]}…", True
    return None, True


_UNHASHED_WARNED: set[str] = set()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state, verified: its sha256 record and every record's CRC-32 are checked first.
    A checkpoint without a sha256 record (written before varmem stored one) loads, with a warning once
    per directory. CorruptCheckpoint (a RunDirError) when the file cannot be trusted."""
    from varmem.episodes.storage import Location, StorageError, is_remote, location

    if isinstance(path, Location) or is_remote(path):  # a checkpoint on object storage (distributed/remote_run.py)
        where = location(path)
        try:
            data = where.read_bytes()
        except StorageError as exc:  # a missing file is the caller's mistake; a failing server stays a StorageError
            if "missing" in str(exc):
                raise ConfigError(f"checkpoint {exc}") from None
            raise
        return checkpoint_from_bytes(data, where.uri, where.parent.uri)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} " + ("is a directory, not a ckpt-*.pt file" if path.is_dir() else "does not exist"))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from None
    return checkpoint_from_bytes(data, str(path), str(path.parent))


def checkpoint_from_bytes(data: bytes, path: str, folder: str) -> dict[str, Any]:
    """A checkpoint's state from its bytes (read from ``path`` in ``folder``), verified as :func:`load_checkpoint` says."""
    problem, hashed = verify_checkpoint_bytes(data)
    if problem is not None:
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt: {problem}")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign file (another pickle, objects weights_only refuses)
        reason = str(exc).strip().split("\n")[0][:200]
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read: {type(exc).__name__}: {reason}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpoint(f"checkpoint {path} is not a varmem checkpoint of format {CHECKPOINT_FORMAT}")
    if not (isinstance(state.get("step"), int) and isinstance(state.get("config"), dict) and isinstance(state.get("model"), dict)):
        raise CorruptCheckpoint(f"checkpoint {path} lacks its step, config or model")
    if not hashed and folder not in _UNHASHED_WARNED:
        _UNHASHED_WARNED.add(folder)
        warn(f"checkpoint {path} has no sha256 record (written by an older varmem): loaded without an integrity "
             "check; the checkpoints written from now on carry one")
    return state


def newest_intact_checkpoint(run_dir: str | Path, *, set_aside: bool = False,
                             using: str = "using") -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint of ``run_dir`` that loads and verifies; None when there is
    none at all. Newer corrupt ones are skipped with a warning naming them and the one used;
    ``set_aside`` (a resume) renames them to ``ckpt-N.pt.corrupt`` (kept, but no longer the newest).
    RunDirError naming every file and its problem when none is intact."""
    found = list_checkpoints(run_dir)
    bad: list[tuple[Path, str]] = []
    for step, path in reversed(found):
        try:
            state = load_checkpoint(path)
        except CorruptCheckpoint as exc:
            bad.append((path, str(exc).replace(f"checkpoint {path} ", "")))
            continue
        for corrupt, problem in bad:
            kept = _set_aside(corrupt) if set_aside else corrupt
            warn(f"checkpoint {corrupt} {problem}" + (f" (kept as {kept.name})" if kept != corrupt else "")
                 + f"; {using} {path} (step {step}) instead")
        return path, state
    if bad:
        raise RunDirError(f"no intact checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: "
                          + "; ".join(f"{p.name} {problem}" for p, problem in bad)
                          + ": restore one from a copy, or start the run again with --overwrite")
    return None


def _set_aside(path: Path) -> Path:
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        path.replace(target)
    except OSError:
        return path
    return target


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a temporary file beside it, fsync, rename), with its sha256
    record. A failed write (a full disk, no permission) leaves no partial file and every other checkpoint as
    it was: RunDirError (or the atomic writer's DiskFullError) naming the path and the space needed."""
    data = serialize_checkpoint(state)
    try:  # a full disk: the writer's DiskFullError (a DataError) names the path, the bytes needed and free
        return atomic_write(path, lambda f: f.write(data), size=len(data))
    except OSError as exc:
        raise RunDirError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def clear_run_dir(run_dir: Path) -> None:
    """What a run starting again (``--overwrite``) removes: checkpoints, metrics, final metrics, events."""
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    for name in (METRICS_FILE, FINAL_FILE):
        (run_dir / name).unlink(missing_ok=True)


def checkpoint_step(path: str | Path) -> int:
    """The step in a checkpoint's file name (``ckpt-00001000.pt`` → 1000)."""
    m = _CKPT_RE.match(Path(path).name)
    if not m:
        raise ConfigError(f"{path} is not named like a checkpoint (ckpt-<step>.pt)")
    return int(m.group(1))


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _, p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)


# --- files of the run directory ---------------------------------------------------------------


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one line. A full disk is a DiskFullError naming the file (a half-written line
    it leaves is dropped by the next resume, :func:`truncate_metrics`)."""
    line = json.dumps(row) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as exc:
        from varmem.episodes.errors import disk_full_error, no_space_cause

        cause = no_space_cause(exc)
        if cause is None:
            raise RunDirError(f"cannot append to {path}: {exc.strerror or exc}") from None
        raise disk_full_error(path, cause, len(line)) from None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step``: a resumed run rewrites what came after its checkpoint. Lines that are
    not whole rows (the half-written last line of a crash or a full disk) are dropped, with a warning."""
    if not path.exists():
        return
    rows, bad = parse_rows(path.read_bytes().decode("utf-8", errors="replace"))
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warn(f"{path}: dropped {len(bad)} line(s) that are not whole JSON rows (line {shown}: a write cut "
             "short by a crash or a full disk)")
    kept = [line for line, row in rows if row.get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
