"""Any folder of images as a source: ``ROOT/<class>/<image>`` or ``ROOT/<group>/<class>/<image>``.

Layout: every image at depth 2 (``flat``: alphabet ``""``) or every image at depth 3
(``grouped``: the group is the alphabet); a mix is an error that names one image of each depth.
Images are ``.png .jpg .jpeg .bmp .gif .webp`` (any case), read as greyscale (transparent =
white paper, a GIF's first frame). Other files in the tree are skipped and counted in
``options()["ignored_files"]``; hidden files, dot-folders and ``__MACOSX`` are not looked at.
A folder where a class (or group) should be that holds no image is an error.

Size rule: every image must have the size of the dataset's first image (first class in
``classes()`` order, first file); ``load`` raises naming the first file that differs, with both
sizes. Pass ``resize_to=(H, W)`` to resize every image instead (Lanczos, aspect not kept).

Ink rule (``ink="auto"``): the paper is the majority colour of the one-pixel image border. The
first image of up to 256 classes (spread evenly over the sorted classes) is read; each gives
the share of its border pixels that are light (>= 128); the mean share >= 0.6 means light paper
and dark ink, <= 0.4 dark paper and light ink, in between is an error asking for ``ink=``.
``options()`` records the decision and the share.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from varmem.episodes.errors import DataError
from varmem.episodes.sources.base import ClassRecord
from varmem.episodes.sources.images import (
    IMAGE_SUFFIXES,
    TreeReader,
    border_pixels,
    decode_grey,
    image_size,
    ink_high,
    list_tree,
    resize_grey,
    stack,
)
from varmem.episodes.sources.omniglot import RELEASE_SPLITS

LAYOUTS = "ROOT/<class>/<image> or ROOT/<group>/<class>/<image>"
INK_SAMPLE_CLASSES = 256  # classes whose first image votes on the ink polarity
INK_DECISIVE = 0.6  # light-border share needed to call the paper light (1 - it: dark)


def is_image(rel: str) -> bool:
    return PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES


class FolderSource:
    """Classes from a folder tree; ``key`` is ``(root, members)`` with members relative to root."""

    name = "folder"

    def __init__(self, root: str | Path, release_split: str = "all", ink: str = "auto",
                 resize_to: tuple[int, int] | None = None):
        if release_split not in RELEASE_SPLITS:
            raise DataError(f"folder: release_split {release_split!r} is not one of {', '.join(RELEASE_SPLITS)}")
        if ink not in ("auto", "dark", "light"):
            raise DataError(f"folder: ink {ink!r} is not one of auto, dark, light")
        if resize_to is not None:
            if len(resize_to) != 2 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in resize_to):
                raise DataError(f"folder: resize_to must be (H, W), two positive integers, got {resize_to!r}")
            resize_to = (int(resize_to[0]), int(resize_to[1]))
        p = Path(root).expanduser()
        if p.exists() and not p.is_dir():
            raise DataError(f"{p}: not a directory (expected {LAYOUTS})")
        tree = list_tree(p, f"a directory, {LAYOUTS}")
        self.root = str(tree.path)
        self.release_split = release_split
        self.resize_to = resize_to
        self._reader = TreeReader(tree.path, False)

        images = [f for f in tree.files if is_image(f)]
        ignored = [f for f in tree.files if not is_image(f)]
        if not images:
            raise DataError(f"{tree.path}: no image files ({', '.join(IMAGE_SUFFIXES)}); expected {LAYOUTS}")
        by_depth: dict[int, str] = {}
        for f in images:
            by_depth.setdefault(f.count("/") + 1, f)
        for depth, example in sorted(by_depth.items()):
            if depth not in (2, 3):
                where = "directly in ROOT" if depth == 1 else "too deep"
                raise DataError(f"{tree.where(example)}: image {where}; expected {LAYOUTS}")
        if len(by_depth) > 1:
            raise DataError(
                f"{tree.where(by_depth[3])}: image at depth 3 (group/class/image) but {tree.where(by_depth[2])} is at "
                f"depth 2 (class/image); use one layout, {LAYOUTS}"
            )
        depth = next(iter(by_depth))
        self.layout = "flat" if depth == 2 else "grouped"

        members: dict[tuple[str, str], list[str]] = {}
        for f in images:
            parts = f.split("/")
            group, cls = ("", parts[0]) if depth == 2 else (parts[0], parts[1])
            members.setdefault((group, cls), []).append(f)
        groups = {g for g, _ in members}
        class_dirs = {f"{g}/{c}" if g else c for g, c in members}
        for d in tree.dirs:
            level = d.count("/") + 1
            if depth == 3 and level == 1 and d not in groups:
                raise DataError(f"{tree.where(d)}: empty group folder (no class folder with images); expected {LAYOUTS}")
            if level == depth - 1 and d not in class_dirs:
                others = sum(1 for f in tree.files if f.startswith(d + "/"))
                raise DataError(f"{tree.where(d)}: empty class folder (no images; {others} other files); expected {LAYOUTS}")

        self._records = [
            ClassRecord(
                alphabet=group,
                character=cls,
                release_split=release_split,
                key=(self.root, tuple(files)),  # sorted, as tree.files is
                image_names=tuple(PurePosixPath(f).name for f in files),
            )
            for (group, cls), files in sorted(members.items())
        ]
        self._n_images = len(images)
        self._ignored = ignored
        first = self._records[0].key[1][0]
        self.first_size = image_size(self._reader.read(first), tree.where(first))  # (H, W)
        self._first_where = tree.where(first)
        self.ink_requested = ink
        self.ink_light_border_share: float | None = None
        self.ink = ink if ink != "auto" else self._decide_ink()

    def _decide_ink(self) -> str:
        n = len(self._records)
        picks = sorted(set(np.linspace(0, n - 1, min(n, INK_SAMPLE_CLASSES)).round().astype(int).tolist()))
        shares = []
        for i in picks:
            rel = self._records[i].key[1][0]
            grey = decode_grey(self._reader.read(rel), self._reader.where(rel))
            shares.append(float((border_pixels(grey) >= 128).mean()))
        share = float(np.mean(shares))
        self.ink_light_border_share = round(share, 4)
        if share >= INK_DECISIVE:
            return "dark"
        if share <= 1.0 - INK_DECISIVE:
            return "light"
        raise DataError(
            f"{self.root}: cannot tell the ink colour: {share:.0%} of the image border pixels are light "
            f"({len(picks)} images); pass ink='dark' (dark strokes on light paper) or ink='light'"
        )

    def options(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "release_split": self.release_split,
            "ink": self.ink,
            "ink_requested": self.ink_requested,
            "ink_light_border_share": self.ink_light_border_share,
            "size": list(self.resize_to or self.first_size),
            "resize_to": list(self.resize_to) if self.resize_to else None,
            "groups": len({r.alphabet for r in self._records}) if self.layout == "grouped" else 0,
            "classes": len(self._records),
            "images": self._n_images,
            "ignored_files": len(self._ignored),
            "ignored_examples": self._ignored[:5],
        }

    def classes(self) -> list[ClassRecord]:
        return list(self._records)

    def load(self, record: ClassRecord) -> np.ndarray:
        """``uint8 [n, H, W]``, ink = 255; (H, W) = ``resize_to`` or the dataset's first image size."""
        root, members = record.key
        reader = self._reader if root == self.root else TreeReader(Path(root), False)
        images = []
        for rel in members:
            where = reader.where(rel)
            grey = decode_grey(reader.read(rel), where)
            if self.resize_to is not None:
                grey = resize_grey(grey, self.resize_to)
            elif grey.shape != self.first_size:
                raise DataError(
                    f"{where}: image is {grey.shape[0]}x{grey.shape[1]} (HxW) but the dataset's first image "
                    f"{self._first_where} is {self.first_size[0]}x{self.first_size[1]}; make them one size or "
                    f"pass resize_to=(H, W)"
                )
            images.append(ink_high(grey, self.ink))
        return stack(images, [reader.where(rel) for rel in members])


__all__ = ["FolderSource", "is_image"]
