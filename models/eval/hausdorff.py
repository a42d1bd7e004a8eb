"""The modified Hausdorff distance between ink-point sets: Lake et al.'s no-training baseline.

Lake, Salakhutdinov & Tenenbaum (2015) report 38.8% error on their 20 official 20-way 1-shot
within-alphabet runs for a nearest neighbour under the *modified Hausdorff distance* (MHD;
Dubuisson & Jain 1994), computed as their public code does (brendenlake/omniglot,
``python/one-shot-classification/demo_classification.py``; the MATLAB demo is the same):

* an image becomes the set of its ink pixels' (row, column) coordinates, **centred** on their mean
  (Lake's ``LoadImgAsPoints``; there ink = a black pixel of the 105×105 PNG, here ink is stored
  high, so ink = a value above :data:`INK_THRESHOLD` of full ink);
* the directed distance d(A, B) = (1/|A|) Σ_{a∈A} min_{b∈B} ‖a − b‖ (Euclidean), and
  MHD(A, B) = max(d(A, B), d(B, A));
* a query takes the class of the support image at the smallest MHD (Lake's ``argmin`` over the
  20 training images; :mod:`varmem.models.eval.classification` turns distances into class scores
  with the same 1-nearest-neighbour rule as the pixel baseline, ties broken at random).

Computed on whatever images it is given: at the model's size (26×26 max-pooled Omniglot, say) on
the episode's own images, or on the 105×105 originals of the same episodes
(:func:`check_same_episodes`: a dataset built from the same source at ``--size 105``).

Vectorised: point sets are padded to a common length with a far-away sentinel point (never the
nearest point of a real one) and their counts; (query, support) pairs go through
``torch.cdist`` in chunks of at most :data:`DISTANCES_PER_CHUNK` distances, each chunk padded only
to its own longest sets. Distances are float32 by default (within ~1e-5 pixel of float64; exactly 0
between identical images, exactly symmetric), averaged in float64. Cost on one core of the shared
2-core CPU: ~10 ms per 20-way 1-shot episode at 26×26, ~0.4-0.75 s at 105×105 (~870 ink points per
image: 400 pairs of ~760,000 distances). Empty sets: MHD(∅, ∅) = 0, MHD(∅, B) = MHD(B, ∅) = +inf for non-empty B
(an image without ink is never the nearest to one with ink).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError

# A pixel is ink when its value in [0, 1] is above this (stored images are ink-high uint8 / 255;
# Omniglot's are 0 or 1 at 105×105 and after the 26×26 max-pool, so any threshold in (0, 1) agrees
# with Lake's "black pixel"; a resized 28×28 image has grey edges, cut at half ink).
INK_THRESHOLD = 0.5
# Distances per cdist call: 2^20 float32 = 4 MiB. Measured on the shared 2-core CPU (1 thread, 8 20-way
# 1-shot episodes of small1's train split): at 26×26 (~90 ink points) 2^16 / 2^18 / 2^19 / 2^20 / 2^21 / 2^22 /
# 2^24 took 18 / 10 / 9-10 / 9-12 / 11-13 / 19 / 27 ms per episode; at 105×105 (~870 points, so every budget
# below ~4·10^6 runs one pair per chunk, unpadded) 0.32-0.40 s whatever the budget up to 2^21, 0.58 s at 2^24.
DISTANCES_PER_CHUNK = 1 << 20
# cdist by differences, not by the expansion |a|² + |b|² − 2a·b: the expansion (1.7× faster at 105×105: 0.43 vs
# 0.72-0.75 s per 20-way episode, same measurement) loses ~1e-3 pixel² to float32 rounding at centred coordinates
# up to ±52, so an image's distance to itself came out ~1e-2 pixel instead of 0 and MHD(A, B) ≠ MHD(B, A) in the
# last bits; by differences both hold exactly and float32 stays within ~1e-5 pixel of float64.
CDIST_MODE = "donot_use_mm_for_euclid_dist"
# Coordinate of a padding point: farther from any real (centred) point of an image up to 1024
# pixels wide (preprocess.py's largest size) than any two real points are from each other.
_SENTINEL = 1.0e4


@dataclass(frozen=True)
class PointSets:
    """N point sets, padded: ``points`` [N, P, 2] (row, column) with rows ≥ ``counts[i]`` at the sentinel,
    ``counts`` int64 [N] (P = max(counts), at least 1)."""

    points: torch.Tensor  # [N, P, 2]
    counts: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.counts.shape[0])


def ink_points(images: torch.Tensor, threshold: float = INK_THRESHOLD, *, centre: bool = True,
               dtype: torch.dtype = torch.float32) -> PointSets:
    """The ink pixels of ``images`` [..., H, W] (values in [0, 1], ink high) as point sets, one per image,
    flattened over the leading dims: coordinates (row, column) in pixels, each set centred on its own
    mean when ``centre`` (as Lake's code does; an empty set stays empty)."""
    H, W = images.shape[-2:]
    ink = images.detach().reshape(-1, H, W).cpu() > threshold  # [N, H, W]
    N = ink.shape[0]
    counts = ink.flatten(1).sum(1)  # int64 [N]
    n, r, c = ink.nonzero(as_tuple=True)  # [K] each; row-major, so grouped by image
    coords = torch.stack([r, c], -1).double()  # [K, 2]
    if centre:
        centroid = torch.zeros(N, 2, dtype=torch.float64).index_add_(0, n, coords)  # [N, 2]
        centroid /= counts.clamp_min(1).unsqueeze(-1)
        coords -= centroid[n]
    start = torch.cumsum(counts, 0) - counts  # [N]: the first row of each image's points
    slot = torch.arange(n.shape[0]) - start[n]  # [K]: a point's position in its set
    points = torch.full((N, max(int(counts.max()) if N else 0, 1), 2), _SENTINEL, dtype=dtype)  # [N, P, 2]
    points[n, slot] = coords.to(dtype)
    return PointSets(points, counts)


def directed_distances(a: PointSets, ia: torch.Tensor, b: PointSets, ib: torch.Tensor,
                       max_distances: int = DISTANCES_PER_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(A, B), d(B, A)) float64 [n] for the n pairs (A = set ``ia[k]`` of ``a``, B = set ``ib[k]`` of ``b``):
    the mean over A's points of the distance to the nearest point of B, and the reverse. NaN where the
    averaged set is empty; where only the other set is empty, a value ≥ the sentinel's distance."""
    n = ia.shape[0]
    d_ab = torch.empty(n, dtype=torch.float64)
    d_ba = torch.empty(n, dtype=torch.float64)
    na, nb = a.counts[ia], b.counts[ib]  # [n]
    widest = max(int(na.max()) if n else 1, 1) * max(int(nb.max()) if n else 1, 1)
    step = max(1, max_distances // widest)  # pairs per chunk, sized by the widest pair; each chunk pads to its own
    for lo in range(0, n, step):
        k = slice(lo, min(lo + step, n))
        pa, pb = max(int(na[k].max()), 1), max(int(nb[k].max()), 1)
        A = a.points[ia[k], :pa]  # [k, Pa, 2]
        B = b.points[ib[k], :pb]  # [k, Pb, 2]
        D = torch.cdist(A, B, compute_mode=CDIST_MODE)  # [k, Pa, Pb]; a sentinel point is never the nearest to a real one
        a_near = D.amin(2).double()  # [k, Pa]: each point of A to its nearest in B
        b_near = D.amin(1).double()  # [k, Pb]
        a_real = torch.arange(pa) < na[k, None]  # [k, Pa]
        b_real = torch.arange(pb) < nb[k, None]  # [k, Pb]
        d_ab[k] = a_near.masked_fill(~a_real, 0.0).sum(1) / na[k]  # 0/0 = NaN for an empty A
        d_ba[k] = b_near.masked_fill(~b_real, 0.0).sum(1) / nb[k]
    return d_ab, d_ba


def modified_hausdorff(a: PointSets, ia: torch.Tensor, b: PointSets, ib: torch.Tensor,
                       max_distances: int = DISTANCES_PER_CHUNK) -> torch.Tensor:
    """MHD(A, B) = max(d(A, B), d(B, A)) float64 [n] for the pairs (``ia[k]``, ``ib[k]``); 0 for two empty
    sets, +inf for an empty and a non-empty one."""
    d_ab, d_ba = directed_distances(a, ia, b, ib, max_distances)
    mhd = torch.maximum(d_ab, d_ba)  # [n]
    empty_a, empty_b = a.counts[ia] == 0, b.counts[ib] == 0
    mhd = mhd.masked_fill(empty_a ^ empty_b, torch.inf)
    return mhd.masked_fill(empty_a & empty_b, 0.0)


def hausdorff_distances(queries: torch.Tensor, support: torch.Tensor, threshold: float = INK_THRESHOLD, *,
                        centre: bool = True, dtype: torch.dtype = torch.float32,
                        max_distances: int = DISTANCES_PER_CHUNK) -> torch.Tensor:
    """MHD between every query and every support image of each episode, float64 [G, T, M]:
    ``queries`` [G, T, 1, H, W], ``support`` [G, M, 1, H', W'] (values in [0, 1], ink high; the two sizes
    may differ: the distance is in pixels of each set's own grid)."""
    G, T, M = queries.shape[0], queries.shape[1], support.shape[1]
    q = ink_points(queries, threshold, centre=centre, dtype=dtype)  # G·T sets
    s = ink_points(support, threshold, centre=centre, dtype=dtype)  # G·M sets
    g, t, m = torch.meshgrid(torch.arange(G), torch.arange(T), torch.arange(M), indexing="ij")  # [G, T, M] each
    iq, isup = (g * T + t).reshape(-1), (g * M + m).reshape(-1)  # pairs in (g, t, m) order: a chunk shares queries
    return modified_hausdorff(q, iq, s, isup, max_distances).view(G, T, M)


# --- the same episodes at another resolution --------------------------------------------------------------------

# The columns that say which image a row is (the image column aside): equal columns, row by row, mean that
# the sampler, a pure function of the split's classes, alphabets and per-class counts, draws the same
# classes and the same items in both datasets.
_IDENTITY_COLUMNS = ("class_id", "alphabet_id", "split", "character", "item", "name", "run", "role", "label")


def check_same_episodes(dataset: Dataset, other: Dataset, split: str | None = None, *, what: str = "--hausdorff-data") -> None:
    """A DataError unless ``other`` holds the same images as ``dataset`` — the same source, the same splits, the
    same classes, alphabets and items in the same order, at any resolution (a ``varmem data build`` of the same
    zip with the same split options and another ``--size``) — so that episode i of a task, drawn with the same
    seed, holds the same images in both. ``split`` None: every split of ``dataset``. The error names the first
    difference and says how to build a matching dataset."""
    where = f"{what} {other.directory}"
    how = (f"build it from the same source with the same split options as {dataset.directory}, only --size changed "
           "(e.g. --size 105 for Lake's originals)")
    if dataset.kind != other.kind:
        raise DataError(f"{where} holds {other.kind} but {dataset.directory} holds {dataset.kind}: {how}")
    splits = dataset.split_names if split is None else [dataset.resolve_split(split)]
    for name in splits:
        if name not in other.split_names:
            raise DataError(f"{where} has no split {name!r} (it has {', '.join(other.split_names)}): {how}")
        mine, theirs = dataset.split(name), other.split(name)
        if mine.class_range != theirs.class_range or mine.num_images != theirs.num_images:
            raise DataError(f"{where}: split {name!r} holds classes {list(theirs.class_range)} and {theirs.num_images} "
                            f"images, {dataset.directory} classes {list(mine.class_range)} and {mine.num_images}: {how}")
        for column in _IDENTITY_COLUMNS:
            a, b = _column(mine, column), _column(theirs, column)
            if (a is None) != (b is None):
                raise DataError(f"{where}: split {name!r} {'lacks' if b is None else 'has'} the column {column!r} "
                                f"that {dataset.directory} {'has' if b is None else 'lacks'}: {how}")
            if a is not None and not np.array_equal(a, b):
                row = int(np.flatnonzero(a != b)[0])
                raise DataError(f"{where}: split {name!r} row {row} has {column} {b[row]!r} where {dataset.directory} "
                                f"has {a[row]!r}: not the same images in the same order; {how}")


def _column(split, name: str) -> np.ndarray | None:
    """A column of every shard of ``split``, concatenated in shard order; None when the shards lack it."""
    parts: list[Any] = []
    for shard in split.shards:
        if name not in shard.table.column_names:
            return None
        parts.append(np.asarray(shard.table.column(name).to_numpy(zero_copy_only=False)))
    return np.concatenate(parts) if parts else np.zeros(0)


__all__ = ["CDIST_MODE", "DISTANCES_PER_CHUNK", "INK_THRESHOLD", "PointSets", "check_same_episodes", "directed_distances",
           "hausdorff_distances", "ink_points", "modified_hausdorff"]
