"""What every dataset source gives the builder.

A source lists its character classes (:class:`ClassRecord`) in a deterministic order and loads
one class's images on request, as ``uint8 [n, H0, W0]`` arrays at the source's own resolution
with ink = high values (255 = full ink, 0 = background). Preprocessing to the dataset's size
(``varmem.episodes.preprocess``) and the split policy (``varmem.episodes.splits``) are the builder's job, so
every source gets the same ones. Sources are picklable: the builder loads classes in a pool of
processes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class ClassRecord:
    """One character class of a source."""

    alphabet: str  # alphabet (or group) name; "" when the source has none
    character: str  # class name within its alphabet, e.g. "character07"
    release_split: str  # the source's own split: "background" / "evaluation" / "all"
    key: Any = None  # source-specific locator (paths, a seed, ...), passed back to load()
    image_names: tuple[str, ...] = field(default=())  # per-image ids (file names, token numbers)


class Source(Protocol):
    """A dataset source: ``omniglot``, ``folder``, ``strokes`` (``lake-runs`` has its own shape)."""

    name: str

    def options(self) -> dict[str, Any]:
        """The source's options as recorded in the manifest (paths, seed, counts, ...)."""
        ...

    def classes(self) -> list[ClassRecord]:
        """All classes, in a deterministic order. Raises DataError naming the bad path."""
        ...

    def load(self, record: ClassRecord) -> np.ndarray:
        """``uint8 [n, H0, W0]``, ink = high, for one class. Raises DataError naming the bad file."""
        ...


@dataclass(frozen=True)
class LakeRun:
    """One of Lake et al.'s official 20-way 1-shot runs, kept with its official pairing."""

    run: int  # 1-based run number, as in ``runNN``
    memory_names: tuple[str, ...]  # "runNN/training/classMM.png", in class order (label = position)
    target_names: tuple[str, ...]  # "runNN/test/itemMM.png", in item order
    target_labels: tuple[int, ...]  # index into memory_names of each target's true class
    memory: np.ndarray  # uint8 [20, H0, W0], ink high
    targets: np.ndarray  # uint8 [20, H0, W0], ink high
