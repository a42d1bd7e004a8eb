"""What the image sources share: listing a zip or a folder as one tree, and decoding images.

A *tree* is a zip file or a directory seen as a list of relative POSIX paths
(``"Alphabet/character01/0108_01.png"``). Hidden entries (a component starting with ``.``) and
macOS's ``__MACOSX`` folders are left out everywhere. Files are read back through
:class:`TreeReader`, which opens a zip once per process and reopens it after a fork (a zip
handle shares its file offset with the parent process, so it must not cross one).

Images are decoded to greyscale ``uint8 [H, W]`` with 0 = black, 255 = white: transparent pixels
count as white paper, a GIF gives its first frame. Sources then turn them ink-high
(:func:`ink_high`).

Limits, checked before anything is inflated or decoded (a DataError names the file and the limit):

* :data:`MAX_FILE_BYTES` — a file (zip member: its uncompressed ``file_size``, and no more is ever
  read) is at most 64 MiB; character images are a few kB (an Omniglot PNG is about 1 kB).
* :data:`MAX_IMAGE_PIXELS` — an image is at most 4096×4096 = 16.8 megapixels by its header, read
  before the pixels are decoded (Omniglot images are 105×105, 11,025 pixels); Pillow's own
  ``Image.MAX_IMAGE_PIXELS`` is lowered to it too.
* A zip member name must be a relative path (no leading ``/``, no ``..``): zips that are not
  (``/x/A/c1/1.png``) are refused naming the member.
"""
from __future__ import annotations

import io
import os
import re
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from varmem.episodes.errors import DataError

# Suffixes (lower case) that the folder source reads as images; Omniglot reads ".png" only.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_FILE_BYTES = 64 << 20  # a file or zip member read from a source, uncompressed
MAX_IMAGE_PIXELS = 4096 * 4096  # pixels of one image, from its header, before decoding
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow refuses 2× this (DecompressionBombError) at open


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
        member = PurePosixPath(name)
        if member.is_absolute() or ".." in member.parts:
            raise DataError(f"{p}::{name}: member name is {'an absolute path' if member.is_absolute() else 'a path with ..'}; "
                            f"a zip of {what} holds relative paths (re-create the zip from inside its folder)")
        if not name or is_hidden(name):
            continue
        if info.is_dir():
            dirs.add(name.rstrip("/"))
            continue
        files.append(name)
        dirs.update(str(parent) for parent in list(member.parents)[:-1])  # zips need not list their folders
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
        """The file's bytes; DataError naming it when it cannot be read or is over MAX_FILE_BYTES
        (checked from its size, or a zip member's declared size, before reading)."""
        try:
            if not self.is_zip:
                st = os.stat(self.path / rel)
                if not stat.S_ISREG(st.st_mode):  # opening a FIFO would wait for a writer
                    raise DataError(f"{self.where(rel)}: not a regular file")
                if st.st_size > MAX_FILE_BYTES:
                    raise DataError(_too_large(self.where(rel), st.st_size))
                with open(self.path / rel, "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)  # a file that grew since stops here too
            else:
                data = self._read_member(rel)
            if len(data) > MAX_FILE_BYTES:
                raise DataError(_too_large(self.where(rel), len(data)))
            return data
        except (OSError, KeyError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
            raise DataError(f"{self.where(rel)}: cannot read ({exc})") from exc

    def _read_member(self, rel: str) -> bytes:
        """A zip member, refused from its declared size before anything is inflated."""
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)  # the parent's handle, if any, is left alone
            self._pid = os.getpid()
        info = self._zip.getinfo(rel)
        if info.file_size > MAX_FILE_BYTES:
            raise DataError(_too_large(self.where(rel), info.file_size))
        with self._zip.open(info) as member:
            return member.read(MAX_FILE_BYTES + 1)


def _too_large(where: str, size: int) -> str:
    return (f"{where}: {size:,} bytes, more than an image file may be ({MAX_FILE_BYTES:,} bytes, "
            "varmem.episodes.sources.images.MAX_FILE_BYTES); character images are a few kB")


def _open_checked(data: bytes, where: str) -> Image.Image:
    """Pillow's lazy open of an image file, its size checked against MAX_IMAGE_PIXELS before any decoding."""
    size = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it in one line
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:  # over twice Image.MAX_IMAGE_PIXELS: Pillow gives the count
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found.group(1)) if found else 2 * MAX_IMAGE_PIXELS + 1
        else:
            w, h = img.size
            pixels, size = w * h, f" ({w}×{h})"
            if pixels <= MAX_IMAGE_PIXELS:
                return img
            img.close()
    raise DataError(f"{where}: the image has {pixels:,} pixels{size}, more than varmem decodes ({MAX_IMAGE_PIXELS:,}, "
                    "varmem.episodes.sources.images.MAX_IMAGE_PIXELS); character images are about 105×105")


def decode_grey(data: bytes, where: str) -> np.ndarray:
    """Decode an image file's bytes to ``uint8 [H, W]``, 0 = black, 255 = white."""
    try:
        with _open_checked(data, where) as img:
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
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: cannot decode the image ({exc})") from exc


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """``(H, W)`` from an image file's header, without decoding the pixels."""
    try:
        with _open_checked(data, where) as img:
            w, h = img.size
            return h, w
    except DataError:
        raise
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
