"""``varmem memory build|verify|info``: memory stores, a trained VMA's keys of 10^5–10^7 entries on disk.

    varmem memory build RUN_DIR --out STORE [--data DIR] [--split S] [--classes N] [--per-class k]
                        [--dtype float16|float32] [--seed S] [--batch N] [--device cpu|cuda] [--overwrite] [--quiet]
    varmem memory verify STORE [--quiet]        exit 0: every shard matches; 1: some do not; 2: the manifest is wrong
    varmem memory info STORE [--json]

The store's format is ``varmem.episodes.memory_store``; ``varmem scale`` reads it. Nothing here imports torch
until a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from varmem.distributed.cli import add_plugin_argument


def add_memory_command(sub: argparse._SubParsersAction) -> None:
    mem = sub.add_parser("memory", help="memory stores: a trained VMA's keys e_a = h(m_a) of many entries, on disk",
                         description="Build, verify and inspect memory stores: the keys e_a = h(m_a) of a trained VMA's "
                                     "memory pathway over many dataset images, as memory-mapped Arrow shards (read by "
                                     "`varmem scale`).")
    msub = mem.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    b = msub.add_parser("build", help="encode C classes × k images of a split through RUN_DIR's memory pathway",
                        description="Encode --classes × --per-class images of a dataset split through the run's memory "
                                    "pathway, chunk by chunk, into STORE (atomically: nothing appears at --out unless the "
                                    "build completes). Classes are taken in a seeded random order.")
    b.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory `varmem train` wrote (a VMA)")
    add_plugin_argument(b)
    b.add_argument("--out", type=Path, required=True, metavar="STORE", help="the store directory to create")
    b.add_argument("--data", type=Path, default=None, metavar="DIR", help="the dataset (default: the run's data.dir)")
    b.add_argument("--split", default=None, metavar="S", help="split or role (default: the run's eval split)")
    b.add_argument("--classes", type=int, default=None, metavar="N", help="classes to encode (default: all of the split)")
    b.add_argument("--per-class", type=int, default=4, metavar="k", help="images per class, items 0..k−1 (default 4)")
    b.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="key dtype on disk (default float16)")
    b.add_argument("--seed", type=int, default=0, help="seed of the class order (default 0)")
    b.add_argument("--batch", type=int, default=1024, metavar="N", help="images per encoder call (default 1024)")
    b.add_argument("--checkpoint", type=Path, default=None, metavar="FILE", help="a checkpoint (default: the newest intact one)")
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="where the encoder runs (default: the run's)")
    b.add_argument("--no-verify-shards", action="store_true", help="trust the dataset's shards without hashing them")
    b.add_argument("--overwrite", action="store_true", help="replace an existing store")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    v = msub.add_parser("verify", help="hash every shard of a store and check it against its manifest",
                        description="Hash every shard and check it against the store's manifest (size, sha256, rows, key "
                                    "width). Exit status 0: all match; 1: some do not (each is listed); 2: the manifest is wrong.")
    v.add_argument("store", type=Path, metavar="STORE")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=_verify)

    i = msub.add_parser("info", help="entries, classes, key width, model and dataset of a store",
                        description="What a store holds and how it was built (reads the manifest only).")
    i.add_argument("store", type=Path, metavar="STORE")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    from varmem.distributed.run import load_run
    from varmem.distributed.scale import RunView, build_store
    from varmem.episodes.errors import DataError
    from varmem.episodes.memory_store import MemoryStore

    for name in ("classes", "per_class", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device, data=args.data,
                   verify_shards=False if args.no_verify_shards else None)
    split, why = run.eval_split(args.split)
    if not args.quiet:
        print(f"encoding split {split!r} ({why}) of {run.dataset.directory} through {run.run_dir} (step {run.step}) into {args.out}",
              file=sys.stderr)
    manifest = build_store(RunView.of(run), run.dataset, split, args.out, classes=args.classes, per_class=args.per_class,
                           seed=args.seed, key_dtype=args.dtype, batch=args.batch, overwrite=args.overwrite,
                           progress=not args.quiet)
    _print_info(MemoryStore(Path(args.out).resolve(), manifest).info())
    print(f"built in {manifest['build']['seconds']:.1f} s ({manifest['build']['entries_per_s']:,.0f} entries/s)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from varmem.episodes.memory_store import MemoryStore

    store = MemoryStore.open(args.store, verify=False)  # verify() hashes every shard itself
    problems = store.verify(quiet=args.quiet)
    n = len(store.manifest["shards"])
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"varmem: error: {len(problems)} of {n} shards do not match {store.directory / 'manifest.json'}", file=sys.stderr)
        return 1
    print(f"ok: {n} shards match the manifest (size, sha256, rows, key width); {store.entries:,} entries")
    return 0


def _info(args: argparse.Namespace) -> int:
    from varmem.episodes.memory_store import MemoryStore

    info = MemoryStore.open(args.store, verify=False).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    m, d = info["model"], info["dataset"]
    print(f"{info['directory']}: {info['entries']:,} entries = {info['classes']:,} classes × {info['per_class']}; "
          f"keys {info['key_dtype']} × {info['key_width']}; {info['shards']} shards, {info['bytes'] / 1e6:.1f} MB")
    print(f"  model: {m.get('run_dir')} step {m.get('step')} ({m.get('family')}, {m.get('similarity')}), "
          f"fingerprint {str(m.get('fingerprint'))[:12]}…")
    print(f"  data:  {d.get('dir')} split {d.get('split')!r}, fingerprint {str(d.get('fingerprint'))[:12]}…")
