"""``varmem scale``: a trained model addressing memories of 10^2–10^7 entries (``varmem.distributed.scale``).

    varmem scale RUN_DIR --data DIR --memory-sizes 100,1000,10000,100000,1000000 [--store STORE]
                 [--split S] [--per-class k] [--targets N] [--samples K] [--batch B] [--shards N]
                 [--device cpu|cuda] [--seed S] [--out DIR] [--json] [--quiet] [--dense-budget GB]

Without --store, a store of max(sizes) entries is built first in OUT/memory-store (or reused when one
built by this run from this data and large enough is there). Writes OUT/scale.json, scale.csv and the
plots scale_gap.png, scale_kl.png, scale_cost.png (OUT: RUN_DIR/scale-<dataset>-<split> by default).
Nothing here imports torch until a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from varmem.distributed.cli import add_plugin_argument


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number (e.g. 100,1000,1e4)") from None
        if value != int(value) or value < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not a whole number ≥ 1")
        out.append(int(value))
    return out


def add_scale_command(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("scale", help="NLL, optimum gap, KL(a), retrieval, time and memory as the memory grows to 10^6+",
                       description="Evaluate a trained VMA with memories of C classes × k examples (the targets' classes "
                                   "always in memory) from a memory store, for each --memory-sizes: the NLL bound, the "
                                   "perfect-model optimum (per-class NLL + log C) and the gap, KL(q(a|x) || p(a)) against "
                                   "log |M|, top-1 retrieval accuracy of q(a|x), time per query batch, peak memory and bytes "
                                   "of keys streamed. A family that reads memory densely (soft attention) is run on the same "
                                   "memories while it fits --dense-budget.")
    s.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    add_plugin_argument(s)
    s.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="a dataset with many classes of k+1 images (e.g. varmem data build --source strokes --classes "
                        "300000 --images-per-class 5 --seed 1)")
    s.add_argument("--memory-sizes", type=_sizes, required=True, metavar="M,M,...", help="memory sizes |M|, multiples of k")
    s.add_argument("--store", type=Path, default=None, metavar="STORE", help="a store `varmem memory build` wrote for this run")
    s.add_argument("--split", default=None, metavar="S", help="split or role (default: the run's eval split)")
    s.add_argument("--per-class", type=int, default=4, metavar="k", help="examples per class when building a store (default 4)")
    s.add_argument("--targets", type=int, default=32, metavar="N", help="target images, one per class (default 32)")
    s.add_argument("--samples", type=int, default=100, metavar="K", help="importance samples per target (default 100)")
    s.add_argument("--batch", type=int, default=32, metavar="B", help="targets per query batch (default 32)")
    s.add_argument("--shards", type=int, default=0, metavar="N",
                   help="spread the store's keys over N Ray actors (a private loopback cluster; default 0: this process)")
    s.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="key dtype of a store built here")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="where the model runs (default: the run's)")
    s.add_argument("--seed", type=int, default=0, help="seed of the samples and of a built store's class order (default 0)")
    s.add_argument("--checkpoint", type=Path, default=None, metavar="FILE")
    s.add_argument("--dense-budget", type=float, default=8.0, metavar="GB",
                   help="dense families: skip sizes predicted to need more than this many GiB (default 8)")
    s.add_argument("--no-verify-shards", action="store_true", help="trust the dataset's shards without hashing them")
    s.add_argument("--out", type=Path, default=None, metavar="DIR", help="where results and plots go")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    s.set_defaults(func=_scale)


def _scale(args: argparse.Namespace) -> int:
    from varmem.distributed.run import load_run
    from varmem.distributed.scale import (RunView, ScaleOptions, build_store, check_sizes, format_table, has_key_pathway,
                                          run_dense_scale, run_scale, write_results)
    from varmem.episodes.errors import DataError
    from varmem.episodes.memory_store import MemoryStore, read_store_manifest

    for name in ("per_class", "targets", "samples", "batch"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.shards < 0:
        raise DataError(f"--shards must be ≥ 0, got {args.shards}")
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device, data=args.data,
                   verify_shards=False if args.no_verify_shards else None)
    view = RunView.of(run)
    split, why = run.eval_split(args.split)
    dataset = run.dataset
    sizes = sorted(set(args.memory_sizes))
    out = args.out or (run.run_dir / f"scale-{dataset.directory.name}-{split}")
    per_class = args.per_class
    if args.store is not None:
        per_class = int(read_store_manifest(args.store)["per_class"])
    n_classes = dataset.split(split).num_classes
    # sizes the data cannot hold are refused before anything is encoded
    check_sizes(sizes, per_class, n_classes * per_class, n_classes, "(to be built)", f"split {split!r} of {dataset.directory}")
    store_dir = args.store
    if store_dir is None and not has_key_pathway(run.model):
        from varmem.distributed.config import ConfigError

        raise ConfigError(f"{run.run_dir}: the {view.family!r} family reads its memory densely and has no keys to store: "
                          "pass --store STORE, a store a VMA run built on this data (`varmem memory build`), to run it on "
                          "the same memories")
    if store_dir is None:
        store_dir = out / "memory-store"
        reuse = False
        if (store_dir / "manifest.json").is_file() and has_key_pathway(run.model):
            try:
                candidate = MemoryStore.open(store_dir)
                candidate.check_model(view.fingerprint(), int(run.model.config.match_dim), run.model.config.similarity, view.describe())
                candidate.check_dataset(dataset.directory, dataset.manifest, split)
                reuse = candidate.entries >= sizes[-1] and candidate.per_class == per_class \
                    and candidate.manifest["class_order"].get("seed") == args.seed
            except DataError:
                reuse = False
        if not reuse:
            say(f"building a memory store of {sizes[-1]:,} entries ({sizes[-1] // per_class:,} classes × {per_class}) "
                f"of split {split!r} ({why}) in {store_dir}")
            build_store(view, dataset, split, store_dir, classes=sizes[-1] // per_class, per_class=per_class, seed=args.seed,
                        key_dtype=args.dtype, overwrite=True, progress=not args.quiet)
        else:
            say(f"reusing the memory store {store_dir}")
    store = MemoryStore.open(store_dir)
    options = ScaleOptions(sizes=sizes, targets=args.targets, samples=args.samples, batch=args.batch, shards=args.shards,
                           seed=args.seed, progress=not args.quiet)
    if has_key_pathway(run.model):
        result = run_scale(view, dataset, split, store, options, say=say)
    else:
        result = run_dense_scale(view, dataset, split, store, options, budget_bytes=args.dense_budget * 2**30, say=say)
    paths = write_results(result, out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        for p in paths:
            print(p)
    return 0
