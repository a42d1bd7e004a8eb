"""What the image sources share: listing a zip or a folder as one tree, and decoding images.

A *tree* is a zip file or a directory seen as a list of relative POSIX paths
(``"Alphabet/character01/0108_01.png"``). Hidden entries (a component starting with ``.``) and
macOS's ``__MACOSX`` folders are left out everywhere. Files are read back through
:class:`TreeReader`, which opens a zip once per process and reopens it after a fork (a zip
handle shares its file offset with the parent process, so it must not cross one).

Images are decoded to greyscale ``uint8 [H, W]`` with 0 = black, 255 = white: transparent pixels
count as white paper, a GIF gives its first frame. Sources then turn them ink-high
(:func:`ink_high`).
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from varmem.episodes.errors import DataError

# Suffixes (lower case) that the folder source reads as images; Omniglot reads ".png" only.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def is_hidden(rel: str) -> bool:
    """True for ``.DS_Store``, ``.git/...``, ``__MACOSX/...`` and anything below a dot-folder."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(rel).parts)


@dataclass(frozen=True)
class Tree:
    """The visible content of a zip or directory: relative file and folder paths, sorted."""

    path: Path  # the zip file or the directory, absolute
    is_zip: bool
    files: tuple[str, ...]  # "a/b/c.png"
    dirs: tuple[str, ...]  # "a/b" (every folder that holds something, and empty ones we saw)

    def where(self, rel: str) -> str:
        """How error messages name a file of this tree: ``zip::member`` or a filesystem path."""
        return f"{self.path}::{rel}" if self.is_zip else str(self.path / rel)


def list_tree(path: str | Path, what: str) -> Tree:
    """List a zip file or a directory; ``what`` names the expected content in error messages."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory (expected {what})")
    p = p.resolve()
    files: list[str] = []
    dirs: set[str] = set()
    if p.is_dir():
        for top, subdirs, names in os.walk(p, followlinks=True):  # symlinked class folders count
            subdirs[:] = [d for d in subdirs if not is_hidden(d)]
            rel_top = Path(top).relative_to(p).as_posix()
            if rel_top != ".":
                dirs.add(rel_top)
            for name in names:
                if not is_hidden(name):
                    files.append(name if rel_top == "." else f"{rel_top}/{name}")
        return Tree(p, False, tuple(sorted(files)), tuple(sorted(dirs)))
    if not zipfile.is_zipfile(p):
        raise DataError(f"{p}: neither a directory nor a zip file (expected {what})")
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{p}: cannot read the zip file ({exc})") from exc
    for info in infos:
        name = info.filename  # kept as stored: TreeReader reads it back by this name
        if not name or is_hidden(name):
            continue
        if info.is_dir():
            dirs.add(name.rstrip("/"))
            continue
        files.append(name)
        parent = PurePosixPath(name).parent
        while str(parent) != ".":  # zips need not list their folders
            dirs.add(str(parent))
            parent = parent.parent
    return Tree(p, True, tuple(sorted(files)), tuple(sorted(dirs)))


class TreeReader:
    """Reads files of one zip or directory; picklable, holds at most one zip handle per process."""

    def __init__(self, path: Path, is_zip: bool):
        self.path = Path(path)
        self.is_zip = is_zip
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def __getstate__(self):
        return {"path": self.path, "is_zip": self.is_zip}

    def __setstate__(self, state):
        self.__init__(state["path"], state["is_zip"])

    def where(self, rel: str) -> str:
        return f"{self.path}::{rel}" if self.is_zip else str(self.path / rel)

    def read(self, rel: str) -> bytes:
        try:
            if not self.is_zip:
                return (self.path / rel).read_bytes()
            if self._zip is None or self._pid != os.getpid():
                self._zip = zipfile.ZipFile(self.path)  # the parent's handle, if any, is left alone
                self._pid = os.getpid()
            return self._zip.read(rel)
        except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{self.where(rel)}: cannot read ({exc})") from exc


def decode_grey(data: bytes, where: str) -> np.ndarray:
    """Decode an image file's bytes to ``uint8 [H, W]``, 0 = black, 255 = white."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("1", "L"):
                grey = img.convert("L")
            elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                grey = Image.alpha_composite(paper, rgba).convert("L")
            else:
                grey = img.convert("L")
            return np.asarray(grey, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: cannot decode the image ({exc})") from exc


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """``(H, W)`` from an image file's header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            return h, w
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: cannot decode the image ({exc})") from exc


def resize_grey(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased (Lanczos) resize of ``uint8 [H, W]`` to ``size = (H, W)``; aspect is not kept."""
    if grey.shape == tuple(size):
        return grey
    h, w = size
    return np.asarray(Image.fromarray(grey).resize((w, h), Image.Resampling.LANCZOS), dtype=np.uint8)


def ink_high(grey: np.ndarray, ink: str) -> np.ndarray:
    """``uint8 [H, W]`` with ink = 255: ``dark`` ink on light paper is inverted, ``light`` is kept."""
    if ink == "dark":
        return 255 - grey
    if ink == "light":
        return grey
    raise ValueError(f"ink must be 'dark' or 'light', got {ink!r}")


def border_pixels(grey: np.ndarray) -> np.ndarray:
    """The one-pixel frame of ``uint8 [H, W]``, flattened (each pixel once)."""
    if min(grey.shape) <= 2:
        return grey.reshape(-1)
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def stack(images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """``uint8 [n, H, W]`` from same-size images; a size mismatch names both files and sizes."""
    first = images[0].shape
    for img, name in zip(images, names):
        if img.shape != first:
            raise DataError(
                f"{name}: image is {img.shape[0]}x{img.shape[1]} (HxW) but {names[0]} of the same class is "
                f"{first[0]}x{first[1]}; all images of a class must have one size"
            )
    return np.stack(images).astype(np.uint8, copy=False)
