"""The Omniglot release (Lake et al. 2015) as a source: ``images_*.zip`` files or their folders.

Layout: ``<top>/<Alphabet>/<characterNN>/<NNNN_NN>.png``, 105x105 1-bit PNGs, black ink on white.
Each path given is one release folder: a zip (its top folder inside, or none), the unzipped top
folder, or a folder holding exactly one top folder. The release split comes from the top
folder's name (``images_background*`` -> background, ``images_evaluation*`` -> evaluation), or
from the path's own name when there is no top folder; ``release_split=`` overrides it (one value
for every path, or one per path with ``None`` = from the name).

Files that are not ``.png`` are skipped and counted (``options()["roots"][i]["ignored_files"]``);
hidden files and ``__MACOSX`` are not counted. ``load`` returns ``uint8 [20, 105, 105]``, ink 255.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from varmem.episodes.errors import DataError
from varmem.episodes.sources.base import ClassRecord
from varmem.episodes.sources.images import TreeReader, decode_grey, ink_high, list_tree, stack

# classes() lists background before evaluation; "all" is for a release folder forced to one split.
RELEASE_SPLITS = ("background", "evaluation", "all")
LAYOUT = "<top>/<Alphabet>/<character>/<image>.png"


def release_split_of(name: str) -> str | None:
    """``background`` / ``evaluation`` from an Omniglot release name, None when it is neither."""
    if name.startswith("images_background"):
        return "background"
    if name.startswith("images_evaluation"):
        return "evaluation"
    return None


class OmniglotSource:
    """Omniglot character classes from one or more release zips or folders.

    ``key`` of a record is ``(container, is_zip, members)``: the zip or folder path and the
    class's image paths inside it, sorted by name; ``image_names`` are the PNG file names.
    """

    name = "omniglot"

    def __init__(self, paths: Sequence[str | Path] | str | Path, release_split: str | Sequence[str | None] | None = None):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = list(paths)
        if not paths:
            raise DataError("omniglot: no path given; pass the release zips or folders (--path, repeatable)")
        if release_split is None or isinstance(release_split, str):
            overrides = [release_split] * len(paths)
        else:
            overrides = list(release_split)
            if len(overrides) != len(paths):
                raise DataError(f"omniglot: {len(overrides)} release_split values for {len(paths)} paths; give one per path")
        for value in overrides:
            if value is not None and value not in RELEASE_SPLITS:
                raise DataError(f"omniglot: release_split {value!r} is not one of {', '.join(RELEASE_SPLITS)}")
        self._release_split = release_split if release_split is None or isinstance(release_split, str) else list(overrides)
        self._roots: list[dict[str, Any]] = []
        self._records: list[ClassRecord] = []
        seen: dict[tuple[str, str], str] = {}
        for path, override in zip(paths, overrides):
            root, records = _scan(path, override)
            for rec in records:
                where = root["where"]
                if (rec.alphabet, rec.character) in seen:
                    raise DataError(
                        f"omniglot: {rec.alphabet}/{rec.character} is in both {seen[rec.alphabet, rec.character]} and "
                        f"{where}; pass each class once (images_background_small1/2 are subsets of images_background)"
                    )
                seen[rec.alphabet, rec.character] = where
            self._roots.append(root)
            self._records.extend(records)
        order = {s: i for i, s in enumerate(RELEASE_SPLITS)}
        self._records.sort(key=lambda r: (order[r.release_split], r.alphabet, r.character))
        self._readers: dict[str, TreeReader] = {}

    def options(self) -> dict[str, Any]:
        return {
            "paths": [r["path"] for r in self._roots],
            "release_split": self._release_split,
            "roots": [{k: v for k, v in r.items() if k != "where"} for r in self._roots],
        }

    def classes(self) -> list[ClassRecord]:
        return list(self._records)

    def load(self, record: ClassRecord) -> np.ndarray:
        """``uint8 [n, H0, W0]`` (105x105 for Omniglot), ink = 255, in the record's image order."""
        container, is_zip, members = record.key
        reader = self._readers.get(container)
        if reader is None:
            reader = self._readers[container] = TreeReader(Path(container), is_zip)
        images = [ink_high(decode_grey(reader.read(m), reader.where(m)), "dark") for m in members]
        return stack(images, [reader.where(m) for m in members])


def _scan(path: str | Path, override: str | None) -> tuple[dict[str, Any], list[ClassRecord]]:
    """One release zip or folder: where its top folder is, its split, its classes."""
    tree = list_tree(path, f"an Omniglot release zip or folder, {LAYOUT}")
    pngs = [f for f in tree.files if f.lower().endswith(".png")]
    if not pngs:
        raise DataError(f"{tree.path}: no .png images; expected the Omniglot layout {LAYOUT}")
    by_depth: dict[int, str] = {}
    for f in pngs:
        by_depth.setdefault(f.count("/") + 1, f)
    if len(by_depth) > 1:
        (d1, f1), (d2, f2) = sorted(by_depth.items())[:2]
        raise DataError(
            f"{tree.path}: images at different depths, e.g. {tree.where(f1)} and {tree.where(f2)}; "
            f"expected every image at {LAYOUT}"
        )
    depth, example = next(iter(by_depth.items()))
    if depth not in (3, 4):
        raise DataError(
            f"{tree.where(example)}: not in the Omniglot layout {LAYOUT} (the top folder may be left out); "
            f"{'no alphabet folders' if depth < 3 else 'too many folder levels'}"
        )
    if depth == 4:
        tops = sorted({f.split("/", 1)[0] for f in pngs})
        if len(tops) > 1:
            raise DataError(f"{tree.path}: holds several Omniglot folders ({', '.join(tops)}); pass each one as its own path")
        top = tops[0]
        release_name = top
    else:
        first = sorted({f.split("/", 1)[0] for f in pngs})
        named = [name for name in first if release_split_of(name)]
        if named:  # "images_background/character01/x.png": a top folder without alphabet folders
            raise DataError(
                f"{tree.where(next(f for f in pngs if f.startswith(named[0] + '/')))}: not in the Omniglot layout "
                f"{LAYOUT}; no alphabet folders below {named[0]}"
            )
        top = ""
        release_name = tree.path.stem if tree.is_zip else tree.path.name
    prefix = f"{top}/" if top else ""
    split = override or release_split_of(release_name)
    if split is None:
        raise DataError(
            f"{tree.where(top) if top else tree.path}: cannot tell the release split from the name {release_name!r} "
            f"(expected images_background* or images_evaluation*); pass release_split='background' or 'evaluation'"
        )

    members: dict[tuple[str, str], list[str]] = {}
    for f in pngs:
        alphabet, character, _ = f[len(prefix):].split("/")
        members.setdefault((alphabet, character), []).append(f)
    # alphabet and character folders with no image below them
    full = {f"{prefix}{a}" for a, _ in members} | {f"{prefix}{a}/{c}" for a, c in members}
    for d in tree.dirs:
        if d.startswith(prefix) and d[len(prefix):].count("/") <= 1 and d not in full:
            raise DataError(f"{tree.where(d)}: empty folder (no .png images); expected {LAYOUT}")
    ignored = sum(1 for f in tree.files if f.startswith(prefix) and not f.lower().endswith(".png"))

    container = str(tree.path)
    records = [
        ClassRecord(
            alphabet=alphabet,
            character=character,
            release_split=split,
            key=(container, tree.is_zip, tuple(files)),  # files are sorted: tree.files is
            image_names=tuple(PurePosixPath(f).name for f in files),
        )
        for (alphabet, character), files in members.items()
    ]
    counts = Counter(len(r.image_names) for r in records)
    root = {
        "path": container,
        "top": top,
        "release_split": split,
        "alphabets": len({a for a, _ in members}),
        "classes": len(records),
        "images": len(pngs),
        "images_per_class": {str(n): c for n, c in sorted(counts.items())},
        "ignored_files": ignored,
        "where": tree.where(top) if top else container,
    }
    return root, records


__all__ = ["OmniglotSource", "RELEASE_SPLITS", "release_split_of"]
