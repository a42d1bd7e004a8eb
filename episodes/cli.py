"""``varmem data build|info|verify|show``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from varmem.episodes.errors import DataError

SOURCES = ("strokes", "omniglot", "lake-runs", "folder")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where it tells something: not for a required option, a flag, a
    default of None or an empty list, nor when the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.required or default is None or default is False or default == [] or default == argparse.SUPPRESS
                or "(default" in text or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))):
            return text
        return super()._get_help_string(action)


def add_data_command(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build, inspect, verify and look at datasets",
                          description="Build, inspect, verify and look at datasets (directories of Arrow shards "
                                      "with a manifest.json).")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", help="what to do with a dataset")

    b = dsub.add_parser("build", help="write a dataset directory of Arrow shards from a source",
                        description="Write a dataset directory of Arrow shards from a source (atomically: "
                                    "nothing appears at --out unless the build completes).",
                        formatter_class=HelpFormatter)
    b.add_argument("--source", required=True, choices=SOURCES,
                   help="strokes: the embedded procedural characters (no files); omniglot: the release zips or "
                        "folders; lake-runs: Lake's all_runs.zip; folder: any ROOT/<class>/<image> tree")
    b.add_argument("--out", required=True, type=_target,
                   help="dataset directory to create: a path, or a URI (s3://bucket/prefix, gs://..., hdfs://...), "
                        "published atomically")
    b.add_argument("--path", action="append", type=Path, default=[],
                   help="omniglot: zip or folder (repeatable); lake-runs: all_runs.zip or folder; folder: the root")
    b.add_argument("--size", type=int, default=26, help="image size: 26 = crop 104 + 4×4 max-pool (VMA), 28 = antialiased resize")
    b.add_argument("--preprocess", choices=("maxpool", "resize"), default=None,
                   help="preprocessing method (default: maxpool for --size 26, resize otherwise)")
    b.add_argument("--split", default="release", choices=("release", "alphabets", "characters"),
                   help="release: the source's own; alphabets: --heldout-alphabet are test; characters: seeded within-alphabet")
    b.add_argument("--heldout-alphabet", action="append", default=[], metavar="NAME",
                   help="with --split alphabets: an alphabet of the test split (repeatable)")
    b.add_argument("--heldout-fraction", type=float, default=0.2, help="with --split characters: share of each alphabet's characters held out")
    b.add_argument("--split-seed", type=int, default=0, help="with --split characters: seed of the held-out choice")
    g = b.add_argument_group("strokes (the embedded default)")
    g.add_argument("--classes", type=int, default=1000, help="number of character classes")
    g.add_argument("--alphabets", type=int, default=None, help="number of alphabets (default: about 30 classes per alphabet)")
    g.add_argument("--images-per-class", type=int, default=20,
                   help="images of each class (at least 2; the default episode, 4 shots + 4 targets, takes 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the character programs and their images")
    g.add_argument("--evaluation-fraction", type=float, default=0.25, help="share of alphabets in the evaluation split")
    f = b.add_argument_group("folder")
    f.add_argument("--ink", choices=("auto", "dark", "light"), default="auto", help="ink polarity of the images")
    b.add_argument("--workers", type=int, default=None, help="processes that load and preprocess (default: all cores, at most 8)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory")
    b.add_argument("--quiet", action="store_true", help="no progress bar and no 'building' line")
    _storage_arguments(b)
    b.set_defaults(func=_build)

    i = dsub.add_parser("info", help="classes, images, shards and bytes per split",
                        description="Classes, images, shards and bytes per split, and the split roles (reads the "
                                    "manifest only).", formatter_class=HelpFormatter)
    i.add_argument("dir", type=_target, help="dataset directory or URI (s3://..., gs://..., hdfs://..., file://...)")
    i.add_argument("--json", action="store_true", help="print the information as JSON")
    _storage_arguments(i)
    i.set_defaults(func=_info)

    v = dsub.add_parser("verify", help="check every shard against the manifest's checksums and row counts",
                        description="Hash every shard and check it against the manifest (size, sha256, rows, image "
                                    "width, class ids). Exit status 0: all match; 1: some do not (each is listed); "
                                    "2: the manifest itself is wrong.", formatter_class=HelpFormatter)
    v.add_argument("dir", type=_target, help="dataset directory or URI (on object storage every shard is fetched again)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    _storage_arguments(v)
    v.set_defaults(func=_verify)

    s = dsub.add_parser("show", help="draw a grid of classes, or one sampled episode, to a PNG",
                        description="Draw a grid of classes, or one sampled episode, to a PNG.", formatter_class=HelpFormatter)
    s.add_argument("dir", type=_target, help="dataset directory or URI")
    s.add_argument("--out", required=True, type=Path, help="PNG file to write")
    s.add_argument("--split", default=None, help="a split or a role (train, eval) (default: the first split)")
    s.add_argument("--classes", type=int, default=8, help="grid: rows (classes)")
    s.add_argument("--per-class", type=int, default=10, help="grid: images per class")
    s.add_argument("--episode", action="store_true", help="draw one sampled episode (memory | targets per class)")
    s.add_argument("--ways", type=int, default=8, help="episode: classes with targets")
    s.add_argument("--shots", type=int, default=4, help="episode: memory entries per class")
    s.add_argument("--targets", type=int, default=4, help="episode: target images per class")
    s.add_argument("--distractors", type=int, default=0, help="episode: extra classes in memory only")
    s.add_argument("--alphabet", choices=("any", "within"), default="any",
                   help="episode: classes from any alphabet, or all from one")
    s.add_argument("--index", type=int, default=0, help="episode index (episodes are a pure function of seed and index)")
    s.add_argument("--seed", type=int, default=0, help="seed of the episode, or of the grid's choice of classes")
    s.add_argument("--compare", type=_target, action="append", default=[], metavar="DIR",
                   help="grid: draw these datasets' grids beside the first (same split name or their first)")
    _storage_arguments(s)
    s.set_defaults(func=_show)


def _target(text: str) -> str:
    """A dataset argument: a local path or a URI, kept as written (``pathlib`` would turn s3:// into s3:/)."""
    return text


def _storage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible server for s3:// URIs, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL_S3 "
                        "or AWS_ENDPOINT_URL, else AWS; credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                        "~/.aws, never a flag)")


def configure_storage(args: argparse.Namespace) -> None:
    """``--s3-endpoint`` for this process's URIs (varmem.episodes.storage)."""
    from varmem.episodes import storage

    storage.configure(getattr(args, "s3_endpoint", None))


def make_source(args: argparse.Namespace):
    """The source object for ``--source`` and its options."""
    paths: list[Path] = args.path
    if args.source == "strokes":
        if paths:
            raise DataError("--path is not used with --source strokes (it needs no files)")
        from varmem.episodes.sources.strokes import StrokesSource

        return StrokesSource(classes=args.classes, alphabets=args.alphabets, images_per_class=args.images_per_class, seed=args.seed,
                             evaluation_fraction=args.evaluation_fraction)
    if not paths:
        raise DataError(f"--source {args.source} needs --path")
    for p in paths:
        if not p.exists():
            raise DataError(f"--path {p} does not exist")
    if args.source == "omniglot":
        from varmem.episodes.sources.omniglot import OmniglotSource

        return OmniglotSource(paths)
    if len(paths) != 1:
        raise DataError(f"--source {args.source} takes one --path, got {len(paths)}")
    if args.source == "lake-runs":
        from varmem.episodes.sources.lake_runs import LakeRunsSource

        return LakeRunsSource(paths[0])
    from varmem.episodes.sources.folder import FolderSource

    return FolderSource(paths[0], ink=args.ink)


def _build(args: argparse.Namespace) -> int:
    from varmem.episodes.build import build_dataset, build_lake_runs
    from varmem.episodes.preprocess import Preprocessing
    from varmem.episodes.splits import SplitPolicy

    if args.workers is not None and args.workers < 1:
        raise DataError(f"--workers must be ≥ 1, got {args.workers}")
    configure_storage(args)
    pre = Preprocessing(size=args.size, method=args.preprocess) if args.preprocess else Preprocessing.default(args.size)
    source = make_source(args)
    if args.source == "lake-runs":
        if args.split != "release":
            raise DataError("--split does not apply to lake-runs: the official runs are kept as they are")
        manifest = build_lake_runs(source, args.out, preprocessing=pre, overwrite=args.overwrite, progress=not args.quiet)
    else:
        policy = SplitPolicy(policy=args.split, heldout_alphabets=tuple(args.heldout_alphabet),
                             fraction=args.heldout_fraction, seed=args.split_seed)
        if not args.quiet:
            print(f"building {args.out} from {args.source} at {pre.size}×{pre.size} ({pre.method})", file=sys.stderr)
        manifest = build_dataset(source, args.out, preprocessing=pre, split=policy, overwrite=args.overwrite,
                                 workers=args.workers, progress=not args.quiet)
    from varmem.episodes.dataset import Dataset
    from varmem.episodes.storage import is_remote

    # a published dataset: its info as a reader sees it (the manifest read back from the server)
    ds = Dataset.open(args.out, verify=False) if is_remote(args.out) else Dataset(Path(args.out).resolve(), manifest)
    _print_info(ds.info())
    print(f"built in {manifest['build']['seconds']:.1f} s")
    for note in small_class_notes(manifest):
        print(f"note: {note}")
    return 0


def small_class_notes(manifest: dict) -> list[str]:
    """One line per split whose smallest class has fewer images than the default episode takes."""
    from varmem.episodes.spec import EpisodeSpec

    if manifest.get("kind") != "classes":
        return []
    spec = EpisodeSpec()
    need = spec.images_per_class
    notes = []
    for name, split in manifest["splits"].items():
        fewest = split.get("min_images_per_class")
        if isinstance(fewest, int) and fewest < need:
            notes.append(f"split {name!r}: its smallest class has {fewest} images; the default episode "
                         f"({spec.shots} shots + {spec.targets} targets per class) takes {need}: train with "
                         f"episode shots + targets ≤ {fewest}")
    return notes


def _print_info(info: dict) -> None:
    print(f"{info['directory']}: {info['source']} ({info['kind']}), {info['image_shape'][0]}×{info['image_shape'][1]} "
          f"{info['preprocessing']}, {info['alphabets']} alphabets, split {info['split_policy']}")
    role_of = {split: role for role, split in info["roles"].items()}
    print(f"  {'split':<12} {'role':<5} {'classes':>9} {'images':>10} {'alphabets':>9} {'shards':>6} {'bytes':>12}")
    for name, s in info["splits"].items():
        print(f"  {name:<12} {role_of.get(name, '-'):<5} {s['classes']:>9} {s['images']:>10} {s['alphabets']:>9} "
              f"{s['shards']:>6} {s['bytes']:>12,}")


def _info(args: argparse.Namespace) -> int:
    from varmem.episodes.dataset import Dataset

    configure_storage(args)
    info = Dataset.open(args.dir, verify=False).info()  # the manifest only, checked; no shard is read
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from varmem.episodes.dataset import Dataset

    configure_storage(args)
    ds = Dataset.open(args.dir, verify=False)  # verify() hashes every shard itself
    problems = ds.verify(quiet=args.quiet)
    n = sum(len(s["shards"]) for s in ds.manifest["splits"].values())
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"varmem: error: {len(problems)} of {n} shards do not match {ds.directory / 'manifest.json'}", file=sys.stderr)
        return 1
    print(f"ok: {n} shards match the manifest (size, sha256, rows, image width, class ids)")
    return 0


def _split_or_first(dataset, name: str | None, strict: bool = True) -> str:
    """The split ``name`` (or role) resolves to in ``dataset``; its first split when ``name`` is None.
    An unknown ``name`` is an error listing the splits and roles (``strict``), else the first split
    (the --compare datasets: "same split name or their first")."""
    if name is not None:
        try:
            return dataset.resolve_split(name)
        except DataError:
            if strict:
                raise
    return dataset.split_names[0]


def _show(args: argparse.Namespace) -> int:
    from varmem.episodes import show
    from varmem.episodes.dataset import Dataset

    configure_storage(args)
    ds = Dataset.open(args.dir)
    if args.episode:
        if args.compare:
            raise DataError("--compare draws class grids; it does not go with --episode")
        if ds.kind == "lake-runs":
            from varmem.episodes.sampler import LakeRunEpisodes

            runs = LakeRunEpisodes(ds)
            if not 0 <= args.index < len(runs):
                raise DataError(f"--index {args.index} is not a run of this dataset (0..{len(runs) - 1})")
            ep, ways, title = runs.episode(args.index), 20, f"Lake run {runs.runs[args.index]:02d}: memory | target"
        else:
            from varmem.episodes.sampler import EpisodeSampler
            from varmem.episodes.spec import EpisodeSpec

            spec = EpisodeSpec(split=args.split or ds.split_names[0], ways=args.ways, shots=args.shots, targets=args.targets,
                               distractors=args.distractors, alphabet=args.alphabet)
            sampler = EpisodeSampler(ds, spec, seed=args.seed)
            ep, spec = sampler.episode(args.index), sampler.spec  # spec.split: the split a role resolved to
            ways = spec.ways
            title = f"episode {args.index} (seed {args.seed}) of {spec.split}: memory ({spec.shots}/class) | targets"
        picture = show.labelled(show.episode_picture(ep, ways), title)
    else:
        pictures = []
        for d in [args.dir] + args.compare:
            other = ds if d == args.dir else Dataset.open(d)
            split = _split_or_first(other, args.split, strict=other is ds)
            grid = show.class_grid(other, split, classes=args.classes, per_class=args.per_class, seed=args.seed)
            pictures.append(show.labelled(grid, f"{other.manifest['source']['name']} / {split}"))
        picture = show.side_by_side(pictures)
    path = show.save_png(picture, args.out)
    print(f"wrote {path} ({picture.shape[1]}×{picture.shape[0]})")
    return 0
