"""A typed, validated episode specification.

An episode holds ``ways`` classes with ``shots`` memory entries and ``targets`` target images
each, plus ``distractors`` extra classes that appear in memory only::

    memory  = (ways + distractors) × shots images     (class-major order)
    targets = ways × targets images                    (class-major order)

The VMA training episode (Bornschein et al. 2017, §4.2): 8 classes from random alphabets × 4
targets = a minibatch of 32, with memory filled with *other* examples of the same classes.
The N-way K-shot classification episode: ``ways = N, shots = K, targets = queries``.
``augment`` (:class:`varmem.episodes.augment.Augmentation`, off by default) adds the training-only
stages: 90° rotations as new classes and a small affine jitter per image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from varmem.episodes.augment import Augmentation
from varmem.episodes.errors import DataError
from varmem.typed import ConfigError, shown

ALPHABET_MODES = ("any", "within")
BINARIZE_MODES = ("none", "static", "dynamic")


@dataclass(frozen=True)
class EpisodeSpec:
    split: str = "background"
    ways: int = 8  # classes per episode, each with targets
    shots: int = 4  # memory (support) entries per class
    targets: int = 4  # target (query) images per class
    distractors: int = 0  # extra classes in memory only
    alphabet: str = "any"  # "any": classes uniformly from the split; "within": all from one alphabet (Lake)
    targets_from_memory: bool = False  # targets are drawn from the memory entries (the recall task)
    binarize: str = "none"  # "none": grey levels in [0, 1]; "static": > threshold; "dynamic": Bernoulli(pixel)
    threshold: float = 0.5
    # training-only stages (rotations as classes, jitter), all off by default; a mapping of its fields is read
    augment: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        augment = self.augment
        if isinstance(augment, dict):
            try:
                augment = Augmentation.from_dict(augment)
            except ConfigError as exc:
                raise DataError(f"episode spec field {exc}") from None
        elif not isinstance(augment, Augmentation):
            raise DataError(f"episode spec field 'augment' must be an Augmentation or a mapping of its fields, "
                            f"got {shown(augment)}")
        object.__setattr__(self, "augment", augment)
        for f in fields(self):
            if f.name == "augment":
                continue
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            if isinstance(value, bool) and f.type != "bool" or not isinstance(value, expected):
                raise DataError(f"episode spec field {f.name!r} must be {f.type}, got {value!r}")
        for name, low in (("ways", 1), ("shots", 1), ("targets", 1), ("distractors", 0)):
            if getattr(self, name) < low:
                raise DataError(f"episode spec field {name!r} must be ≥ {low}, got {getattr(self, name)}")
        if self.alphabet not in ALPHABET_MODES:
            raise DataError(f"episode spec field 'alphabet' must be one of {ALPHABET_MODES}, got {self.alphabet!r}")
        if self.binarize not in BINARIZE_MODES:
            raise DataError(f"episode spec field 'binarize' must be one of {BINARIZE_MODES}, got {self.binarize!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise DataError(f"episode spec field 'threshold' must be in [0, 1], got {self.threshold}")
        if self.targets_from_memory and self.targets > self.shots:
            raise DataError(
                f"episode spec: targets_from_memory draws targets from memory, so 'targets' ({self.targets}) "
                f"must be ≤ 'shots' ({self.shots})"
            )

    # --- derived sizes ------------------------------------------------------------------------
    @property
    def memory_classes(self) -> int:
        return self.ways + self.distractors

    @property
    def memory_size(self) -> int:
        return self.memory_classes * self.shots

    @property
    def num_targets(self) -> int:
        return self.ways * self.targets

    @property
    def images_per_class(self) -> int:
        """Distinct images needed from each (non-distractor) class."""
        return self.shots if self.targets_from_memory else self.shots + self.targets

    # --- presets ------------------------------------------------------------------------------
    @classmethod
    def vma_training(cls, split: str = "background", **overrides: Any) -> "EpisodeSpec":
        """8 classes × 4 targets (a minibatch of 32), 4 other examples of each in memory."""
        return cls(**{"split": split, "ways": 8, "shots": 4, "targets": 4, **overrides})

    @classmethod
    def classification(cls, split: str, ways: int = 5, shots: int = 1, queries: int = 1, **overrides: Any) -> "EpisodeSpec":
        """N-way K-shot: memory = the support set, targets = the queries."""
        return cls(**{"split": split, "ways": ways, "shots": shots, "targets": queries, **overrides})

    # --- (de)serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpisodeSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"episode spec: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def check_against(self, split: "Any", split_label: str = "") -> None:
        """Raise DataError when the split cannot supply episodes of this spec (names what is short)."""
        where = split_label or f"split {split.name!r}"
        n_classes = split.num_classes * self.augment.class_factor  # rotations: each class is 4 classes
        if self.memory_classes > n_classes:
            rotated = f" ({split.num_classes} × {self.augment.class_factor} rotations)" if self.augment.rotations else ""
            raise DataError(
                f"episode spec asks for {self.memory_classes} classes (ways={self.ways} + distractors={self.distractors}) "
                f"but {where} has {n_classes}{rotated}"
            )
        if self.alphabet == "within":
            sizes = {a: len(idx) for a, idx in split.alphabets.items()}
            if max(sizes.values(), default=0) < self.memory_classes:
                raise DataError(
                    f"episode spec asks for {self.memory_classes} classes within one alphabet but the largest alphabet "
                    f"of {where} has {max(sizes.values(), default=0)}"
                )
        fewest = int(split.class_count.min()) if n_classes else 0
        if self.images_per_class > fewest:
            need = "shots" if self.targets_from_memory else f"shots + targets = {self.shots} + {self.targets}"
            raise DataError(
                f"episode spec needs {self.images_per_class} images per class ({need}) but the smallest class "
                f"of {where} has {fewest}"
            )
