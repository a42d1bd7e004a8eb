"""Pictures of the data: class grids and sampled episodes, as PNG files people can look at.

Images are drawn with dark ink on white (the stored convention is ink = high), small images
upscaled by an integer factor so that 26×26 characters are readable.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.files import atomic_write
from varmem.episodes.sampler import Episode

BG = 255  # white paper
SEP = 200  # light grey between blocks


def tile(images: np.ndarray, pad: int = 2, fill: int = BG) -> np.ndarray:
    """uint8 [R, C, h, w] (ink = high) → one uint8 picture, ink dark, cells separated by ``pad``."""
    r, c, h, w = images.shape
    out = np.full((r * (h + pad) + pad, c * (w + pad) + pad), fill, dtype=np.uint8)
    for i in range(r):
        for j in range(c):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = 255 - images[i, j]
    return out


def upscale(images: np.ndarray, min_size: int = 56) -> np.ndarray:
    """Nearest-neighbour integer upscaling of the last two axes until they are ≥ ``min_size``."""
    f = max(1, -(-min_size // images.shape[-1]))
    return images.repeat(f, axis=-2).repeat(f, axis=-1) if f > 1 else images


def class_grid(dataset: Dataset, split: str | None = None, classes: int = 8, per_class: int = 10, seed: int = 0) -> np.ndarray:
    """``classes`` rows (seeded choice over the split), each the first ``per_class`` images of a class."""
    for option, value in (("--classes", classes), ("--per-class", per_class)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{option} must be an integer ≥ 1, got {value!r}")
    name = split or dataset.split_names[0]
    s = dataset.split(name)
    k = min(classes, s.num_classes)
    chosen = np.sort(np.random.default_rng(seed).choice(s.num_classes, size=k, replace=False))
    n = min(per_class, int(s.class_count[chosen].min()))
    rows = np.stack([s.class_images(c)[:n] for c in chosen])  # [k, n, H, W]
    return tile(upscale(rows))


def episode_picture(episode: Episode, ways: int) -> np.ndarray:
    """One row per memory class: its memory entries, a gap, then its targets (distractors: none)."""
    mem = (episode.memory[:, 0].numpy() * 255).round().astype(np.uint8)  # [M, H, W]
    tgt = (episode.targets[:, 0].numpy() * 255).round().astype(np.uint8)  # [T, H, W]
    mem_labels, tgt_labels = episode.memory_labels.numpy(), episode.target_labels.numpy()
    n_classes = int(mem_labels.max()) + 1
    shots = int((mem_labels == 0).sum())
    per_target = int((tgt_labels == 0).sum())
    h, w = mem.shape[1:]
    cells = np.zeros((n_classes, shots + 1 + per_target, h, w), dtype=np.uint8)
    for c in range(n_classes):
        cells[c, :shots] = mem[mem_labels == c]
        if c < ways:
            cells[c, shots + 1 :] = tgt[tgt_labels == c]
    pic = tile(upscale(cells))
    # shade the gap column so memory and targets read as two blocks
    f = upscale(cells[:1, :1]).shape[-1]
    x0 = 2 + shots * (f + 2)
    pic[:, x0 : x0 + f] = SEP
    return pic


def labelled(picture: np.ndarray, title: str) -> np.ndarray:
    """The picture with a one-line title above it."""
    band = 16
    img = Image.new("L", (picture.shape[1], picture.shape[0] + band), color=BG)
    img.paste(Image.fromarray(picture), (0, band))
    ImageDraw.Draw(img).text((3, 2), title, fill=0)
    return np.asarray(img)


def side_by_side(pictures: list[np.ndarray], gap: int = 8) -> np.ndarray:
    h = max(p.shape[0] for p in pictures)
    parts = []
    for i, p in enumerate(pictures):
        padded = np.full((h, p.shape[1]), BG, dtype=np.uint8)
        padded[: p.shape[0]] = p
        parts.append(padded)
        if i < len(pictures) - 1:
            parts.append(np.full((h, gap), SEP, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write a greyscale PNG atomically (temporary file, then rename)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(f"--out must name a .png file, got {path}")
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG", optimize=True)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
