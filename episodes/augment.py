"""Augmentation of training episodes: 90° rotations as new classes, small affine jitter per image.

Two stages of :class:`varmem.episodes.sampler.EpisodeSampler`, set by ``EpisodeSpec.augment`` (an
:class:`Augmentation`; the run config's ``episode.train.augment``), both off by default (the VMA paper
trained without them). Like the rest of the sampler they are pure functions of (seed, episode index):
the same index gives the same augmented episode in any process, worker or order. They apply to
training episodes only: the run config refuses them in ``episode.eval`` and the sampler refuses them
on a dataset's eval split, so validation and ``varmem eval`` episodes are never augmented.

**Rotations as classes** (the usual Omniglot practice: Vinyals et al. 2016, Snell et al. 2017 train on
1,200 × 4 classes): each class ``c`` of the split becomes ``ROTATIONS = 4`` classes ``(c, r)``,
``r = 0..3``, whose images are all of ``c``'s images rotated by ``r · 90°`` counter-clockwise
(:func:`rotate`, ``np.rot90``: exact, square images only). The sampler draws its classes from the
``4 · N`` classes ``(c, r)``; an episode's ``class_ids`` are ``id(c) + r · B`` (:func:`rotated_class_ids`;
``B`` is one more than the dataset's largest class id, so rotation 0 keeps the class's own id and no
rotated id is the id of a real class). Within-alphabet episodes (``alphabet="within"``): a rotated
alphabet ``(a, r)`` is an alphabet of its own — an episode draws one alphabet and one rotation, then
all its classes from that alphabet at that rotation — so, as in Lake's within-alphabet task, the
classes of an episode share a script and an orientation and the rotation is no cue to tell them apart.
(Characters symmetric under a half or quarter turn, like "O", give a class that equals its rotation;
the practice accepts that.)

**Jitter**: each image at position ``p`` of the episode (memory entries ``0..M−1`` in class-major
order, then targets ``M..M+T−1``) is resampled through its own affine map of the image plane about
the image centre, in pixels (:func:`jitter_maps`)::

    x' = A x + t,   A = s · R(θ) · [[1, tan φ], [0, 1]],   t = (t_x, t_y)

    θ ~ U(−jitter_degrees, +jitter_degrees)    rotation (x right, y down: θ > 0 turns clockwise on screen)
    t_x, t_y ~ U(−jitter_shift, +jitter_shift) shift in pixels, each axis on its own
    s ~ U(1 − jitter_scale, 1 + jitter_scale)  scale (the ink mass scales by det A = s²)
    φ ~ U(−jitter_shear, +jitter_shear)        shear along x

with bilinear interpolation and no ink outside the frame (``grid_sample``, zero padding), rounded
back to ``uint8`` before binarization. The five numbers of position ``p`` come from their own Philox
stream keyed by (seed, index) (:func:`jitter_parameters`): row ``p`` depends on (seed, index, p) only,
and the sampler's other draws (classes, images, dynamic binarization noise) are the same with
jitter on or off. In the recall task (``targets_from_memory``) a target is the memory entry it copies,
jitter included.

The settings are a typed config section (``varmem.typed.Section``): a bad value is a ConfigError
naming ``augment.<field>`` (``episode.train.augment.<field>`` in a run config).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from varmem.typed import Section

ROTATIONS = 4  # quarter turns: each class becomes 4 classes
JITTER_PARAMETERS = ("degrees", "shift_x", "shift_y", "scale", "shear")  # the columns of jitter_parameters
# The jitter stream: the episode's Philox key (seed, index) with its counter started at 2^192, a block
# of the counter space the sampler's own stream (counter 0 upwards) never reaches.
_JITTER_COUNTER = 1 << 192
_SEED_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Augmentation(Section):
    """Augmentation stages of training episodes (all off by default); see the module docstring."""

    section: ClassVar[str] = "augment"

    rotations: bool = False  # 90° rotations as new classes: N classes → 4N, class (c, r) = c turned r·90°
    jitter: bool = False  # a small random affine map per image (the magnitudes below)
    jitter_degrees: float = 10.0  # rotation angle ~ U(−d, d), degrees
    jitter_shift: float = 1.0  # shift ~ U(−s, s) pixels, x and y independently (pixels of the dataset's images)
    jitter_scale: float = 0.1  # scale factor ~ U(1 − s, 1 + s)
    jitter_shear: float = 0.0  # shear angle along x ~ U(−d, d), degrees

    def validate(self) -> None:
        self._require(0.0 <= self.jitter_degrees <= 180.0, "jitter_degrees", "in [0, 180] (degrees)")
        self._require(self.jitter_shift >= 0.0, "jitter_shift", "≥ 0 (pixels)")
        self._require(0.0 <= self.jitter_scale <= 0.5, "jitter_scale", "in [0, 0.5] (scale factor in [1 − s, 1 + s])")
        self._require(0.0 <= self.jitter_shear <= 45.0, "jitter_shear", "in [0, 45] (degrees)")

    @property
    def enabled(self) -> bool:
        """Whether any stage changes episodes."""
        return self.rotations or self.jitter

    @property
    def class_factor(self) -> int:
        """How many classes the sampler sees per class of the split (4 with rotations, else 1)."""
        return ROTATIONS if self.rotations else 1


# --- rotations as classes ---------------------------------------------------------------------


def rotate(images: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W] (H == W) → image ``i`` turned ``turns[i]`` · 90° counter-clockwise (exact)."""
    turns = np.asarray(turns) % ROTATIONS  # [n]
    out = images.copy()
    for r in range(1, ROTATIONS):
        sel = turns == r
        if sel.any():
            out[sel] = np.rot90(images[sel], k=r, axes=(1, 2))
    return out


def rotated_class_ids(class_ids: np.ndarray, turns: np.ndarray, id_bound: int) -> np.ndarray:
    """int64 [C]: the id of class ``(c, r)``: ``id(c) + r · id_bound`` (rotation 0 keeps the class's id)."""
    return np.asarray(class_ids, dtype=np.int64) + np.asarray(turns, dtype=np.int64) * int(id_bound)


def source_class_ids(class_ids: np.ndarray, id_bound: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`rotated_class_ids`: (id of the source class, quarter turns), each int64 [C]."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    return class_ids % int(id_bound), class_ids // int(id_bound)


# --- jitter ------------------------------------------------------------------------------------


def jitter_parameters(aug: Augmentation, seed: int, index: int, n: int) -> np.ndarray:
    """float64 [n, 5]: (θ degrees, t_x, t_y pixels, s, φ degrees) of positions 0..n−1 of episode ``index``.

    Row ``p`` is the same for any ``n > p``: each row takes the next 5 uniforms of the stream."""
    rng = np.random.Generator(np.random.Philox(key=[int(seed) & _SEED_MASK, int(index) & _SEED_MASK],
                                               counter=_JITTER_COUNTER))
    u = rng.uniform(-1.0, 1.0, size=(n, len(JITTER_PARAMETERS)))  # [n, 5]
    scale = np.array([aug.jitter_degrees, aug.jitter_shift, aug.jitter_shift, aug.jitter_scale, aug.jitter_shear])
    params = u * scale  # [n, 5]
    params[:, 3] += 1.0  # s = 1 + U(−jitter_scale, jitter_scale)
    return params


def jitter_maps(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The affine maps x' = A x + t of ``params`` [n, 5] in pixels about the image centre (x right,
    y down): A float64 [n, 2, 2], t float64 [n, 2]."""
    theta, shear = np.deg2rad(params[:, 0]), np.deg2rad(params[:, 4])  # [n]
    c, s_, k, scale = np.cos(theta), np.sin(theta), np.tan(shear), params[:, 3]
    rot = np.stack([np.stack([c, -s_], -1), np.stack([s_, c], -1)], -2)  # [n, 2, 2]
    shear_m = np.zeros_like(rot)
    shear_m[:, 0, 0], shear_m[:, 0, 1], shear_m[:, 1, 1] = 1.0, k, 1.0
    a = scale[:, None, None] * (rot @ shear_m)  # [n, 2, 2]
    return a, params[:, 1:3].copy()


def jitter(images: np.ndarray, params: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W] → uint8 [n, H, W]: image ``i`` resampled through the map of ``params[i]``
    (bilinear, zero outside the frame, rounded): one ``grid_sample`` over the batch.

    The sampling grid is built here with numpy rather than by ``affine_grid`` (the same grid up to float32
    rounding, ≤ 5e-7; the same images on the strokes26 images tried):
    on the 2-core development machine, one thread, 64 images at 26×26 took 270 µs per call this way and
    480 µs through ``affine_grid``, whose batched matmul cost 260 µs of it."""
    import torch
    import torch.nn.functional as F

    n, h, w = images.shape
    if n == 0:
        return images
    a, t = jitter_maps(params)
    # grid_sample wants, per output pixel, where to read: x = A⁻¹ (x' − t), in normalized coordinates
    # (align_corners=False: pixel j's centre is (2j + 1)/W − 1, i.e. centred pixels times 2/W).
    inv = np.linalg.inv(a)  # [n, 2, 2]
    half = np.array([w / 2.0, h / 2.0])  # pixels per normalized unit, x and y
    lin = (inv * half[None, None, :] / half[None, :, None]).astype(np.float32)  # P⁻¹ A⁻¹ P, [n, 2, 2]
    off = (-np.einsum("nij,nj->ni", inv, t) / half[None, :]).astype(np.float32)  # −P⁻¹ A⁻¹ t, [n, 2]
    xn = (np.arange(w, dtype=np.float32) * 2 + 1) / w - 1  # [W] normalized output pixel centres
    yn = ((np.arange(h, dtype=np.float32) * 2 + 1) / h - 1)[:, None]  # [H, 1]
    grid = np.empty((n, h, w, 2), dtype=np.float32)  # [n, H, W, (x, y)]: where output pixel (i, j) reads
    for k in range(2):
        grid[..., k] = lin[:, k, 0, None, None] * xn + lin[:, k, 1, None, None] * yn + off[:, k, None, None]
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).unsqueeze(1)  # [n, 1, H, W]
    out = F.grid_sample(x, torch.from_numpy(grid), mode="bilinear", padding_mode="zeros", align_corners=False)  # [n, 1, H, W]
    return out.squeeze(1).round_().clamp_(0.0, 255.0).to(torch.uint8).numpy()
