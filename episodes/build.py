"""``varmem data build``: a source → preprocessed, split, class-sharded Arrow dataset directory.

Written atomically: everything goes to ``.NAME.building-*`` beside the target, the manifest
last, and the directory is renamed into place only when complete. An error or a crash leaves
no directory that looks complete (and the temporary one is removed on errors). The building
folder records its builder (``.builder.json``: pid, host, boot id, process start time); a later
build of the same NAME removes the building folders whose builder is gone (killed builds), and
leaves alone those of live builds and of other hosts. A full disk (ENOSPC, EDQUOT) is a one-line
:class:`~varmem.episodes.errors.DiskFullError` naming the folder, the space the dataset needs and
the space free.

``--out`` may be a URI (``s3://bucket/prefix``, ``gs://``, ``hdfs://``: ``varmem.episodes.storage``). The
dataset is then built in a local temporary folder as above and published (:func:`publish`): its shards
and manifest are uploaded under a hidden temporary prefix beside the target
(``.NAME.building-PID-HEX/``), copied from there into place on the server, shards first and the manifest
last, and the temporary prefix is removed. A reader never sees a half-written dataset: a prefix without
its manifest is not a dataset (``--overwrite`` removes the old manifest first, so between the two a reader
is told the dataset is missing, never given a mix of old and new shards). A build killed while publishing
leaves its temporary prefix; the next build of the same NAME removes it (:func:`remove_stale_remote_builds`)
when its builder is gone: on this host, its pid is dead (as locally); on another host, or with no record,
nothing was written there for :data:`LEGACY_STALE_AFTER_S` (a live publish writes an object every few seconds).

Every class needs at least :data:`MIN_IMAGES_PER_CLASS` images (the smallest episode: one shot
and one target); a class with fewer is refused, naming it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from varmem.episodes.errors import DataError, disk_full_error, no_space_cause
from varmem.episodes.manifest import SCHEMA, SCHEMA_VERSION, write_manifest
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.roles import roles_by_naming_rule
from varmem.episodes.shards import schema, write_shard
from varmem.episodes.sources.base import ClassRecord, Source
from varmem.episodes.splits import SplitPolicy
from varmem.episodes.storage import Location, is_remote, location, staging_name
from varmem.progress import progress as progress_bar

SPLIT_ORDER = ("background", "evaluation", "train", "test", "all", "lake-runs")
DEFAULT_SHARD_BYTES = 64 << 20  # ~64 MiB of images per shard: 4,900 classes of 20 at 26×26
MIN_IMAGES_PER_CLASS = 2  # the smallest episode: 1 shot + 1 target per class
ROW_OVERHEAD_BYTES = 96  # Arrow bytes per row besides the image (ids, names), for the disk-space estimate
BUILDER_FILE = ".builder.json"  # inside a building folder: who is building it
LEGACY_STALE_AFTER_S = 3600  # a building folder without BUILDER_FILE is stale after this long, its pid gone


def _split_key(name: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


# --- process-pool workers: the source and preprocessing are sent once per process ---------------
_worker_state: dict[str, Any] = {}


def _init_worker(source: Source, preprocessing: Preprocessing) -> None:
    _worker_state["source"], _worker_state["pre"] = source, preprocessing


def _load_class(record: ClassRecord) -> np.ndarray:
    source, pre = _worker_state["source"], _worker_state["pre"]
    raw = source.load(record)
    what = f"{source.name} class {record.alphabet}/{record.character}"
    if raw.ndim != 3 or raw.shape[0] == 0:
        raise DataError(f"{what}: no images (empty class)")
    if raw.shape[0] < MIN_IMAGES_PER_CLASS:
        raise DataError(too_few_images(what, raw.shape[0]))
    return pre.apply(raw, what)


def too_few_images(what: str, n: int) -> str:
    """The message for a class of ``n`` < MIN_IMAGES_PER_CLASS images."""
    from varmem.episodes.spec import EpisodeSpec

    default = EpisodeSpec()
    return (f"{what}: {n} image{'s' if n != 1 else ''}; every class needs at least {MIN_IMAGES_PER_CLASS} (an episode takes "
            f"1 shot + 1 target per class; the default episode, {default.shots} shots + {default.targets} targets, "
            f"takes {default.images_per_class}): add images to the class or leave it out of the source")


def _load_all(source: Source, pre: Preprocessing, records: list[ClassRecord], workers: int) -> Iterator[np.ndarray]:
    if workers <= 1 or len(records) < 32:
        _init_worker(source, pre)
        yield from map(_load_class, records)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(source, pre)) as pool:
        yield from pool.map(_load_class, records, chunksize=max(1, min(64, len(records) // (8 * workers))))


# --- directory handling -------------------------------------------------------------------------
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, Linux ``/proc/PID/stat`` field 22), None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def builder_record() -> dict[str, Any]:
    """Who is building: this process's pid, host, boot id and start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(), "start": _process_start(os.getpid())}


def builder_gone(folder: Path, now: float | None = None) -> str | None:
    """Why the build that owns ``folder`` (a ``.NAME.building-*`` folder) is dead — a reason, e.g.
    ``"pid 123 on host h is gone"`` — or None when it may be alive (a live pid, another host, unknown)."""
    try:
        record = json.loads((folder / BUILDER_FILE).read_text(encoding="utf-8"))
        int(record["pid"]), str(record["host"])
    except (OSError, ValueError, KeyError, TypeError):
        # no record (killed before writing it, or an older varmem): the pid of its name, once it is old
        try:
            pid = int(folder.name.rsplit(".building-", 1)[1].split("-")[0])
            age = (now or time.time()) - folder.stat().st_mtime
        except (IndexError, ValueError, OSError):
            return None
        if age >= LEGACY_STALE_AFTER_S and not _pid_alive(pid):
            return f"pid {pid} is gone and it was last written {age / 3600:.1f} h ago"
        return None
    return _local_builder_gone(record)


def _local_builder_gone(record: dict[str, Any]) -> str | None:
    """Why a builder record of this host names a dead build, or None (alive, another host, unknown)."""
    host = socket.gethostname()
    pid, rec_host = int(record["pid"]), str(record["host"])
    if rec_host != host:
        return None  # a build on another machine sharing this folder: cannot tell
    boot = _boot_id()
    if record.get("boot_id") and boot and record["boot_id"] != boot:
        return f"pid {pid} on {host} ran before the last reboot"
    if not _pid_alive(pid):
        return f"pid {pid} on {host} is gone"
    start = record.get("start")
    if start and _process_start(pid) not in (None, start):
        return f"pid {pid} on {host} is gone (the pid is now another process's)"
    return None


def remove_stale_builds(out: Path) -> list[str]:
    """Remove the ``.NAME.building-*`` folders beside ``out`` whose builder is gone; the messages."""
    removed = []
    for folder in sorted(out.parent.glob(f".{glob_escape(out.name)}.building-*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        why = builder_gone(folder)
        if why is None:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(f"removed {folder}, left by a killed build ({why})")
    return removed


def remove_stale_remote_builds(target: Location, now: float | None = None) -> list[str]:
    """Remove the temporary ``.NAME.building-*`` prefixes beside ``target`` on object storage whose build is
    gone (see the module docstring); the messages. A prefix of a live build is left alone."""
    prefix = f".{target.name}.building-"
    removed = []
    for info in target.parent.list(recursive=False):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith(prefix):
            continue
        staging = target.parent.child(name)
        why = _remote_builder_gone(staging, now)
        if why is None:
            continue
        staging.delete_tree()
        removed.append(f"removed {staging}, left by a killed build ({why})")
    return removed


def _remote_builder_gone(staging: Location, now: float | None = None) -> str | None:
    """Why the publish that owns ``staging`` (a temporary prefix) is dead, or None when it may be alive."""
    from varmem.episodes.storage import StorageError

    files = list(staging.files())
    if not files:
        return None  # nothing left under it (removed meanwhile)
    newest = max((info.mtime.timestamp() for _, info in files if info.mtime is not None), default=None)
    quiet_s = (now or time.time()) - newest if newest is not None else None
    try:
        record = json.loads(staging.child(BUILDER_FILE).read_bytes())
        int(record["pid"]), str(record["host"])
    except (StorageError, ValueError, KeyError, TypeError):
        record = None
    if record is not None and str(record["host"]) == socket.gethostname():
        return _local_builder_gone(record)
    if quiet_s is not None and quiet_s >= LEGACY_STALE_AFTER_S:
        who = f"pid {record['pid']} on {record['host']}" if record is not None else "a build with no record"
        return f"{who} wrote nothing there for {quiet_s / 3600:.1f} h"
    return None


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def atomic_directory(out: Path, overwrite: bool, need_bytes: int | None = None) -> Iterator[Path]:
    """Yield a hidden temporary directory beside ``out``; rename it to ``out`` when the block
    completes, remove it when the block raises. An existing ``out`` is replaced only on success.
    Stale building folders of killed builds are removed first; ENOSPC / EDQUOT becomes a
    DiskFullError naming ``out``, ``need_bytes`` and the free space."""
    for line in remove_stale_builds(out):
        print(f"varmem: {line}", file=sys.stderr)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        tmp.mkdir()
        (tmp / BUILDER_FILE).write_text(json.dumps(builder_record()) + "\n", encoding="utf-8")
        yield tmp
        (tmp / BUILDER_FILE).unlink()
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{secrets.token_hex(3)}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = no_space_cause(exc)
        if cause is not None:
            raise disk_full_error(out, cause, need_bytes, what=f"building the dataset in {tmp.name}") from exc
        raise


def _base_manifest(source: Any, pre: Preprocessing, kind: str) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        vm_version = version("varmem")
    except Exception:
        vm_version = "unknown"
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "varmem_version": vm_version,
        "source": {"name": source.name, "version": getattr(source, "version", None), "options": source.options()},
        "preprocessing": pre.describe(),
        "image_shape": [pre.size, pre.size],
    }


def build_dataset(
    source: Source,
    out: str | Path,
    *,
    preprocessing: Preprocessing,
    split: SplitPolicy = SplitPolicy(),
    overwrite: bool = False,
    workers: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a class-sharded dataset from ``source`` at ``out``; returns the manifest. ``progress``: a bar
    over the classes on a terminal (``varmem.progress``); the manifest maps the roles train / eval to
    the splits by the naming rule (``varmem.episodes.roles``). ``out`` may be a URI (built locally, then
    :func:`publish` ed)."""
    if is_remote(out):
        return _build_remote(out, overwrite, lambda local: build_dataset(
            source, local, preprocessing=preprocessing, split=split, workers=workers, shard_bytes=shard_bytes,
            progress=progress))
    out = local_target(out)
    t0 = time.perf_counter()
    records = source.classes()
    if not records:
        raise DataError(f"source {source.name} has no classes")
    for r in records:
        if 0 < len(r.image_names) < MIN_IMAGES_PER_CLASS:
            raise DataError(too_few_images(f"{source.name} class {r.alphabet}/{r.character}", len(r.image_names)))
    split_names = split.assign(records)
    s = preprocessing.size
    need = sum(len(r.image_names) or 20 for r in records) * (s * s + ROW_OVERHEAD_BYTES)
    with atomic_directory(out, overwrite, need) as tmp:
        manifest = _base_manifest(source, preprocessing, "classes")
        manifest["split"] = split.describe()
        alphabets = sorted({r.alphabet for r in records})
        alphabet_id = {a: i for i, a in enumerate(alphabets)}
        manifest["alphabets"] = alphabets

        order = sorted(range(len(records)), key=lambda i: (_split_key(split_names[i]), records[i].alphabet, records[i].character))
        workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        per_class_guess = max((len(r.image_names) for r in records), default=0) or 20
        classes_per_shard = max(1, shard_bytes // (per_class_guess * s * s))
        sch = schema(s, s)

        splits: dict[str, dict[str, Any]] = {}
        bar = progress_bar(total=len(records), desc=f"building {out.name}", unit="class", quiet=not progress)
        loaded = _load_all(source, preprocessing, [records[i] for i in order], workers)
        class_id = 0
        pending: list[tuple[int, np.ndarray]] = []  # (record index, images) of the shard being filled

        def flush(split_name: str) -> None:
            nonlocal pending
            if not pending:
                return
            info = splits[split_name]
            images = np.concatenate([imgs for _, imgs in pending])
            cols: dict[str, list] = {k: [] for k in ("class_id", "alphabet_id", "split", "character", "item", "name")}
            lo = info["_next_id"]
            for j, (ri, imgs) in enumerate(pending):
                r, n = records[ri], imgs.shape[0]
                names = list(r.image_names) if len(r.image_names) == n else [f"{k:04d}" for k in range(n)]
                cols["class_id"] += [lo + j] * n
                cols["alphabet_id"] += [alphabet_id[r.alphabet]] * n
                cols["split"] += [split_name] * n
                cols["character"] += [r.character] * n
                cols["item"] += list(range(n))
                cols["name"] += names
            file = f"{split_name}-{len(info['shards']):05d}.arrow"
            meta = write_shard(tmp / file, cols, images, sch)
            info["shards"].append({"file": file, "class_range": [lo, lo + len(pending)], **meta})
            info["_next_id"] = lo + len(pending)
            pending = []

        with bar:
            current = None
            for ri, images in zip(order, loaded):
                name = split_names[ri]
                if name != current:
                    if current is not None:
                        flush(current)
                    current = name
                    splits[name] = {"classes": 0, "images": 0, "class_range": [class_id, class_id], "alphabets": set(),
                                    "min_images_per_class": None, "max_images_per_class": 0, "shards": [], "_next_id": class_id}
                info = splits[name]
                n = images.shape[0]
                info["classes"] += 1
                info["images"] += n
                info["alphabets"].add(alphabet_id[records[ri].alphabet])
                info["min_images_per_class"] = n if info["min_images_per_class"] is None else min(info["min_images_per_class"], n)
                info["max_images_per_class"] = max(info["max_images_per_class"], n)
                pending.append((ri, images))
                class_id += 1
                info["class_range"][1] = class_id
                if len(pending) >= classes_per_shard:
                    flush(name)
                bar.update(1)
            flush(current)
        for info in splits.values():
            info["alphabets"] = sorted(info["alphabets"])
            del info["_next_id"]
        manifest["splits"] = splits
        manifest["roles"] = roles_by_naming_rule(splits)
        seconds = time.perf_counter() - t0
        n_images = sum(i["images"] for i in splits.values())
        manifest["build"] = {"seconds": round(seconds, 3), "images_per_s": round(n_images / max(seconds, 1e-9), 1), "workers": workers}
        _stamp_and_write(tmp, manifest)
    return manifest


def _stamp_and_write(tmp: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, checked as a reader will check it, with the shards stamped as verified
    (the builder has just hashed them; ``varmem.episodes.stamps``)."""
    from varmem.episodes.dataset import Dataset
    from varmem.episodes.manifest import validate_manifest

    validate_manifest(manifest, f"{tmp.name}/manifest.json (as built)")
    Dataset(tmp, manifest).stamp_as_built()
    write_manifest(tmp, manifest)


def build_lake_runs(source, out: str | Path, *, preprocessing: Preprocessing, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Build the official one-shot runs as fixed 20-way 1-shot episodes (split ``lake-runs``, no role)."""
    if is_remote(out):
        return _build_remote(out, overwrite, lambda local: build_lake_runs(source, local, preprocessing=preprocessing,
                                                                          progress=progress))
    out = local_target(out)
    t0 = time.perf_counter()
    runs = source.runs()
    if not runs:
        raise DataError(f"{source.options().get('path', 'lake-runs source')}: no runs found")
    s = preprocessing.size
    need = sum(len(r.memory_names) + len(r.target_names) for r in runs) * (s * s + ROW_OVERHEAD_BYTES)
    with atomic_directory(out, overwrite, need) as tmp:
        manifest = _base_manifest(source, preprocessing, "lake-runs")
        manifest["split"] = {"policy": "official-runs"}
        manifest["alphabets"] = [f"run{r.run:02d}" for r in runs]
        cols: dict[str, list] = {k: [] for k in ("class_id", "alphabet_id", "split", "character", "item", "name", "run", "role", "label")}
        images, class_base = [], 0
        for ai, r in enumerate(progress_bar(runs, desc=f"building {out.name}", unit="run", quiet=not progress)):
            ways = len(r.memory_names)
            mem = preprocessing.apply(r.memory, f"lake run {r.run:02d} training images")
            tgt = preprocessing.apply(r.targets, f"lake run {r.run:02d} test images")
            images += [mem, tgt]
            for role, names, labels in (("memory", r.memory_names, range(ways)), ("target", r.target_names, r.target_labels)):
                for item, (name, label) in enumerate(zip(names, labels)):
                    cols["class_id"].append(class_base + label)
                    cols["alphabet_id"].append(ai)
                    cols["split"].append("lake-runs")
                    cols["character"].append(r.memory_names[label])
                    cols["item"].append(item)
                    cols["name"].append(name)
                    cols["run"].append(r.run)
                    cols["role"].append(role)
                    cols["label"].append(label)
            class_base += ways
        file = "lake-runs-00000.arrow"
        all_images = np.concatenate(images)
        order = np.argsort(np.asarray(cols["class_id"]), kind="stable")  # shards are sorted by class
        all_images = all_images[order]
        cols = {k: [v[i] for i in order] for k, v in cols.items()}
        meta = write_shard(tmp / file, cols, all_images, schema(s, s, lake_runs=True))
        manifest["splits"] = {"lake-runs": {
            "classes": class_base, "images": int(all_images.shape[0]), "runs": len(runs),
            "class_range": [0, class_base], "alphabets": list(range(len(runs))),
            "min_images_per_class": 2, "max_images_per_class": None,
            "shards": [{"file": file, "class_range": [0, class_base], **meta}],
        }}
        manifest["roles"] = {}
        manifest["build"] = {"seconds": round(time.perf_counter() - t0, 3)}
        _stamp_and_write(tmp, manifest)
    return manifest


# --- datasets on object storage -----------------------------------------------------------------
def local_target(out: "str | Path") -> Path:
    """A local ``--out``: a path, or a ``file://`` URI's path."""
    from varmem.episodes.storage import is_uri

    return location(out).local_path if is_uri(out) else Path(out)


def _build_remote(out: str, overwrite: bool, build_local) -> dict[str, Any]:
    """Build with ``build_local(local_dir)`` in a local temporary folder, then :func:`publish` it to ``out``."""
    import tempfile

    from varmem.episodes.manifest import MANIFEST

    target = location(out)
    for line in remove_stale_remote_builds(target):
        print(f"varmem: {line}", file=sys.stderr)
    if target.child(MANIFEST).exists() and not overwrite:
        raise DataError(f"{target} already holds a dataset; pass --overwrite to replace it")
    with tempfile.TemporaryDirectory(prefix="varmem-build-") as tmp:
        local = Path(tmp) / (target.name or "dataset")
        manifest = build_local(local)
        t0 = time.perf_counter()
        publish(local, target, overwrite=overwrite)
        manifest.setdefault("build", {})["publish_s"] = round(time.perf_counter() - t0, 3)
    return manifest


def publish(local: Path, target: Location, *, overwrite: bool = False) -> None:
    """Publish the complete dataset folder ``local`` at ``target`` on object storage, so that no reader sees
    it half-written: upload everything under a hidden temporary prefix beside ``target`` (shards first, the
    manifest last), then copy it into place on the server (shards, then the manifest), then remove the
    temporary prefix and, with ``overwrite``, the old dataset's files that the new one does not have. An
    existing dataset's manifest is deleted before its shards are replaced. On any error the temporary prefix
    is removed and ``target`` is left as it was (or, once its old manifest is gone, without a manifest)."""
    from varmem.episodes.manifest import MANIFEST
    from varmem.episodes.stamps import STAMP_FILE

    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*")
                   if p.is_file() and p.name not in (STAMP_FILE, BUILDER_FILE))
    if MANIFEST not in files:
        raise DataError(f"{local} holds no {MANIFEST}: not a complete dataset to publish")
    order = [f for f in files if f != MANIFEST] + [MANIFEST]  # the manifest last: a dataset exists once it does
    staging = target.parent.child(staging_name(target.name))
    try:
        staging.child(BUILDER_FILE).write_text(json.dumps(builder_record()) + "\n")
        for rel in order:
            staging.child(*rel.split("/")).upload(local / rel)
        old = {rel for rel, _ in target.files()} if target.exists() or target.is_dir() else set()
        if MANIFEST in old:
            if not overwrite:
                raise DataError(f"{target} already holds a dataset; pass --overwrite to replace it")
            target.child(MANIFEST).delete()  # the old dataset is gone for readers before any shard changes
        for rel in order:
            staging.child(*rel.split("/")).copy_to(target.child(*rel.split("/")))
        for rel in sorted(old - set(files) - {MANIFEST}):
            target.child(*rel.split("/")).delete()
    finally:
        staging.delete_tree()
