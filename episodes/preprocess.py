"""Preprocessing of raw character images to a dataset's size, as in the literature.

Raw images arrive from a source as ``uint8 [n, H0, W0]`` with ink = 255. Two methods:

* ``maxpool`` (``--size 26``, the VMA few-shot setting): crop the 105×105 image to its top-left
  104×104, then 4×4 max-pool, so that ink stays 1 (255) wherever any of the 16 pixels had ink.
  In general: crop to ``size * factor`` with ``factor = H0 // size`` and max-pool by ``factor``.
* ``resize`` (``--size 28`` and any other size): antialiased resize (Pillow's box-filtered
  ``reduce``/Lanczos path for downsampling) to ``size × size``, keeping grey levels.

Stored images are ``uint8 [size, size]``, ink = high, 0..255.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from varmem.episodes.errors import DataError

METHODS = ("maxpool", "resize")


@dataclass(frozen=True)
class Preprocessing:
    size: int
    method: str  # "maxpool" | "resize"

    @staticmethod
    def default(size: int) -> "Preprocessing":
        """26 → crop-104 + 4×4 max-pool (VMA few-shot); anything else → antialiased resize."""
        return Preprocessing(size=size, method="maxpool" if size == 26 else "resize")

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 2 or self.size > 1024:
            raise DataError(f"--size must be an integer in [2, 1024], got {self.size!r}")
        if self.method not in METHODS:
            raise DataError(f"--preprocess must be one of {', '.join(METHODS)}, got {self.method!r}")

    def describe(self) -> dict:
        d = asdict(self)
        if self.method == "maxpool":
            d["description"] = f"crop to {self.size}*f (f = input size // {self.size}), f×f max-pool; ink = high"
        else:
            d["description"] = f"antialiased resize to {self.size}×{self.size} (Pillow LANCZOS); ink = high"
        d["dtype"] = "uint8"
        d["range"] = [0, 255]
        return d

    def apply(self, images: np.ndarray, what: str = "images") -> np.ndarray:
        """``uint8 [n, H0, W0]`` → ``uint8 [n, size, size]``."""
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{what}: expected uint8 [n, H, W], got {images.dtype} {images.shape}")
        n, h0, w0 = images.shape
        s = self.size
        if (h0, w0) == (s, s):
            return np.ascontiguousarray(images)
        if self.method == "maxpool":
            f = min(h0, w0) // s
            if f < 1:
                raise DataError(f"{what}: images of {h0}×{w0} are smaller than --size {s}; max-pool cannot upsample")
            crop = images[:, : s * f, : s * f]  # [n, s*f, s*f]; 105 → 104 for s = 26
            return crop.reshape(n, s, f, s, f).max(axis=(2, 4))  # [n, s, s]
        out = np.empty((n, s, s), dtype=np.uint8)
        for i in range(n):
            out[i] = np.asarray(Image.fromarray(images[i]).resize((s, s), Image.Resampling.LANCZOS))
        return out
