"""``strokes``: the embedded default dataset, a procedural generator of handwritten-like characters.

In the spirit of Lake et al.'s generative model of characters (Bayesian Program Learning,
Science 2015), in three levels, each a pure function of seeds so that any class of any size of
dataset can be made on its own, in any process:

* **alphabet** (``seed, a``): a style — a library of 10-30 sub-stroke primitives (splines in a
  normalized frame: lines, arcs, loops, S-curves, hooks, in proportions set by the alphabet's
  curviness), how many strokes and sub-strokes a character has, how sub-strokes join (smoothly or
  at corners, with angles quantized to 45 or 90 degrees for angular alphabets), how strokes relate,
  how often dots and short bars are added, pen width, slant and aspect.
* **character** (``seed, a, c``): a program of 1-4 strokes (plus up to 2 dots or short bars),
  each a chain of 1-3 primitives (6 at most in all) with their own scale and rotation; every
  stroke after the first starts independently or at the start, end or a point along an earlier
  stroke. Each stroke's placement is the best of 12 tries (least running over itself and earlier
  strokes, most compact), and a stroke with no clean place is left out. The program is drawn once
  without noise to fit it to the canvas (largest side 48-76 px of 105, as Omniglot's).
* **token** (``seed, a, c, t``): the program run again with motor noise — Gaussian jitter on
  control points, per-sub-stroke rotation and scale, jitter of stroke starts and attachment
  points, which are re-derived from the noisy strokes so the topology is kept — then an affine
  jitter (rotation, shear, scale, translation) and a pen width of 4-6 px (Omniglot's pen is
  5 px at 105x105), rendered 1-bit at 105x105, like Omniglot, by the distance from each pixel to
  densely sampled Catmull-Rom curves.

The programs and the rasterizer are :mod:`varmem.episodes.sources.stroke_programs`.
``load`` returns ``uint8 [images_per_class, 105, 105]``, ink = 255, like the Omniglot source
before preprocessing: 3,000-4,500 images/s of CPU time on one core of the 2-core dev machine (about half
of it building the character program, half rasterizing 20 tokens at once). A scaling dataset of few images
per class pays mostly for the programs: 1.4-1.9 ms of CPU per class of 5 images (2.3-2.5 ms before the
crowding distances lost their [C, n, m, 2] temporaries, same images). Measured builds (2 workers,
preprocessing and Arrow writing included): ``--classes 28000 --images-per-class 5`` 69 s of CPU;
``--classes 290000 --images-per-class 5 --evaluation-fraction 0.9`` (260,292 evaluation classes: 10^6
memory entries of 4 + a target each) 696 s of CPU, 23 min of wall time on the shared 2-core machine
under load ~8 (about 6 min on 2 idle cores).
``preview_grid`` draws classes x tokens for people to look at; ``write_preview`` makes
``docs/images/strokes.png`` (``python -m varmem.episodes.sources.strokes docs/images/strokes.png``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from varmem.episodes.errors import DataError
from varmem.episodes.sources.base import ClassRecord
from varmem.episodes.sources.stroke_programs import _TAG_LAYOUT, GENERATOR_VERSION, SIZE, _rng, render_tokens  # noqa: F401

def _check_int(value: Any, option: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{option} must be an integer, got {value!r}")
    if value < minimum:
        raise DataError(f"{option} must be ≥ {minimum}, got {value}")
    return int(value)


class StrokesSource:
    """Procedural handwritten-like characters: any number of alphabets and classes, no download.

    Classes are spread over alphabets unevenly but deterministically (every alphabet gets at least
    one); ``evaluation_fraction`` of the alphabets (at least one, and at least one left for
    background, when there are two or more) form the evaluation split, chosen by ``seed``.
    Construction and ``classes()`` are cheap for 100,000+ classes; nothing is drawn until ``load``.
    """

    name = "strokes"
    version = GENERATOR_VERSION  # recorded in the manifest: options() alone cannot tell generator versions apart

    def __init__(
        self,
        classes: int,
        alphabets: int | None = None,
        images_per_class: int = 20,
        seed: int = 0,
        evaluation_fraction: float = 0.25,
    ):
        self.n_classes = _check_int(classes, "--classes", 1)
        if alphabets is None:
            alphabets = max(1, round(self.n_classes / 30))  # Omniglot: ~32 characters per alphabet
        self.n_alphabets = _check_int(alphabets, "--alphabets", 1)
        if self.n_alphabets > self.n_classes:
            raise DataError(
                f"--alphabets ({self.n_alphabets}) must not exceed --classes ({self.n_classes}): "
                "every alphabet needs at least one class"
            )
        self.images_per_class = _check_int(images_per_class, "--images-per-class", 1)
        self.seed = _check_int(seed, "--seed", 0)
        if isinstance(evaluation_fraction, bool) or not isinstance(evaluation_fraction, (int, float)) \
                or not 0 < evaluation_fraction < 1:
            raise DataError(f"--evaluation-fraction must be a number in (0, 1), got {evaluation_fraction!r}")
        self.evaluation_fraction = float(evaluation_fraction)
        self._counts: np.ndarray | None = None  # classes per alphabet, on first use

    def options(self) -> dict[str, Any]:
        return {
            "classes": self.n_classes,
            "alphabets": self.n_alphabets,
            "images_per_class": self.images_per_class,
            "seed": self.seed,
            "evaluation_fraction": self.evaluation_fraction,
        }

    def _layout(self) -> tuple[np.ndarray, np.ndarray]:
        """Classes per alphabet [A] and whether each alphabet is in the evaluation split [A]."""
        a = self.n_alphabets
        rng = _rng(_TAG_LAYOUT, self.seed, self.n_classes, a)
        weights = rng.gamma(8.0, size=a)  # spread ~0.35 of the mean: 14-50 at 30 (Omniglot: 14-55)
        counts = 1 + rng.multinomial(self.n_classes - a, weights / weights.sum())
        evaluation = np.zeros(a, dtype=bool)
        if a >= 2:
            n_eval = min(a - 1, max(1, round(self.evaluation_fraction * a)))
            evaluation[rng.permutation(a)[:n_eval]] = True
        return counts, evaluation

    def classes(self) -> list[ClassRecord]:
        counts, evaluation = self._layout()
        self._counts = counts
        a_width = max(4, len(str(self.n_alphabets - 1)))
        c_width = max(3, len(str(int(counts.max()) - 1)))
        names = tuple(f"token{t:02d}" for t in range(self.images_per_class))
        records = []
        for a, (count, is_eval) in enumerate(zip(counts.tolist(), evaluation.tolist())):
            alphabet = f"strokes-a{a:0{a_width}d}"
            split = "evaluation" if is_eval else "background"
            records.extend(
                ClassRecord(alphabet, f"character{c:0{c_width}d}", split, (a, c), names) for c in range(count)
            )
        return records

    def load(self, record: ClassRecord) -> np.ndarray:
        try:
            a, c = (int(v) for v in record.key)
        except (TypeError, ValueError):
            raise DataError(f"strokes: class {record.alphabet}/{record.character} has key {record.key!r}, "
                            "not (alphabet, character)") from None
        if self._counts is None:
            self._counts = self._layout()[0]
        if not (0 <= a < self.n_alphabets and 0 <= c < self._counts[a]):
            raise DataError(f"strokes: class key {record.key!r} of {record.alphabet}/{record.character} is not one "
                            f"of this source's classes (options {self.options()}); take records from classes()")
        return render_tokens(self.seed, a, c, range(self.images_per_class))


def preview_grid(source: StrokesSource, classes: int | Sequence[ClassRecord] = 6, tokens: int = 10) -> np.ndarray:
    """``uint8 [rows, cols]`` grid for people to look at: one class per row, ink dark on white.

    ``classes`` is a list of records or a count, taken two per alphabet from the first alphabets.
    Cells are 105x105 with 1-pixel grey rules between them.
    """
    if isinstance(classes, int):
        by_alphabet: dict[str, list[ClassRecord]] = {}
        for r in source.classes():
            by_alphabet.setdefault(r.alphabet, []).append(r)
        picked: list[ClassRecord] = []
        for rs in by_alphabet.values():
            picked.extend(rs[:2])
            if len(picked) >= classes:
                break
        if len(picked) < classes:
            picked = source.classes()[:classes]
        classes = picked[:classes]
    cell = SIZE + 1
    grid = np.full((len(classes) * cell + 1, tokens * cell + 1), 160, dtype=np.uint8)
    for i, r in enumerate(classes):
        a, c = r.key
        images = 255 - render_tokens(source.seed, a, c, range(tokens))
        for j in range(tokens):
            grid[1 + i * cell:1 + i * cell + SIZE, 1 + j * cell:1 + j * cell + SIZE] = images[j]
    return grid


# docs/images/strokes.png: two classes each of an angular, a curvy and a looped alphabet
# of the default dataset (--classes 1000 --seed 0).
PREVIEW_KEYS = ((0, 1), (0, 7), (4, 3), (4, 7), (7, 1), (7, 3))


def write_preview(path: str, tokens: int = 10) -> None:
    """Save the README's preview grid (PREVIEW_KEYS of ``StrokesSource(classes=1000, seed=0)``)."""
    from PIL import Image

    source = StrokesSource(classes=1000, seed=0)
    by_key = {r.key: r for r in source.classes()}
    Image.fromarray(preview_grid(source, [by_key[k] for k in PREVIEW_KEYS], tokens)).save(path, optimize=True)


if __name__ == "__main__":  # python -m varmem.episodes.sources.strokes docs/images/strokes.png
    import sys

    write_preview(sys.argv[1] if len(sys.argv) > 1 else "strokes.png")
