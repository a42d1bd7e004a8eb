"""A tiny in-memory source for builder and sampler tests (no files, no generator)."""
from __future__ import annotations

import numpy as np

from varmem.episodes.errors import DataError
from varmem.episodes.sources.base import ClassRecord


class TinySource:
    """``alphabets`` × ``per_alphabet`` classes of ``n`` 105×105 images; class c's images all
    carry the class id in pixel (0, 0) and the image index in pixel (0, 1), so tests can read
    back exactly which images a sampler picked. ``fail_at`` raises while loading that class."""

    name = "tiny"

    def __init__(self, alphabets: int = 3, per_alphabet: int = 4, n: int = 20, counts: dict | None = None,
                 fail_at: int | None = None, size: int = 105, evaluation: tuple[int, ...] = (2,)):
        self.alphabets, self.per_alphabet, self.n = alphabets, per_alphabet, n
        self.counts = counts or {}
        self.fail_at, self.size, self.evaluation = fail_at, size, evaluation

    def options(self):
        return {"alphabets": self.alphabets, "per_alphabet": self.per_alphabet, "n": self.n}

    def classes(self):
        out = []
        for a in range(self.alphabets):
            for c in range(self.per_alphabet):
                k = a * self.per_alphabet + c
                split = "evaluation" if a in self.evaluation else "background"
                n = self.counts.get(k, self.n)
                out.append(ClassRecord(f"alpha{a}", f"character{c:02d}", split, key=k,
                                       image_names=tuple(f"{k:03d}_{i:02d}.png" for i in range(n))))
        return out

    def load(self, record):
        k = record.key
        if k == self.fail_at:
            raise DataError(f"tiny class {k}: cannot be read")
        n = len(record.image_names)
        rng = np.random.default_rng(k)
        imgs = (rng.random((n, self.size, self.size)) < 0.1).astype(np.uint8) * 255
        imgs[:, :8, :8] = 0
        # 4×4 blocks so that the values survive the 26-px max-pool: block (0,0) = class, (0,1) = item
        imgs[:, 0:4, 0:4] = k % 255 + 1
        for i in range(n):
            imgs[i, 0:4, 4:8] = i + 1
        return imgs
