"""Episode sampling: a pure function of (dataset, spec, seed, episode index).

:class:`EpisodeSampler` turns an index into an :class:`Episode`; the same index gives the same
episode in any process, with any number of workers, in any order. Randomness comes from a
Philox generator keyed by ``(seed, index)``: nothing depends on what was sampled before.

Shapes (``H × W`` the dataset's image size; ``C = ways + distractors``; ``M = C · shots``;
``T = ways · targets``)::

    memory         float32 [M, 1, H, W]   in [0, 1] (or {0, 1} when binarized), class-major
    memory_labels  int64   [M]            episode-local label 0..C−1 (distractors ≥ ways)
    targets        float32 [T, 1, H, W]
    target_labels  int64   [T]            episode-local label 0..ways−1
    class_ids      int64   [C]            global class id of each episode-local label

:class:`EpisodeBatch` stacks G episodes along a new leading axis.

``spec.augment`` (:mod:`varmem.episodes.augment`, training episodes only) adds two stages, pure
functions of (seed, index) too: with ``rotations`` the classes are drawn from the split's classes ×
4 quarter turns (``class_ids`` then hold ``id + turn · B``, see ``augment.rotated_class_ids``); with
``jitter`` each image is resampled through a small random affine map before binarization. With both
off (the default) episodes are exactly those of a sampler without the stages.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from varmem.episodes import augment as aug_stages
from varmem.episodes.dataset import Dataset, Split
from varmem.episodes.errors import DataError
from varmem.episodes.spec import EpisodeSpec

_SEED_MASK = (1 << 64) - 1


@dataclass
class Episode:
    memory: torch.Tensor  # float32 [M, 1, H, W]
    memory_labels: torch.Tensor  # int64 [M]
    targets: torch.Tensor  # float32 [T, 1, H, W]
    target_labels: torch.Tensor  # int64 [T]
    class_ids: torch.Tensor  # int64 [C]
    index: int = -1  # global episode index (-1 for fixed episodes without one)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episode":
        return type(self)(**{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})


@dataclass
class EpisodeBatch(Episode):
    """G episodes stacked: memory [G, M, 1, H, W], targets [G, T, 1, H, W], labels [G, ·], index int64 [G]."""

    index: torch.Tensor = None  # type: ignore[assignment]

    @classmethod
    def stack(cls, episodes: list[Episode]) -> "EpisodeBatch":
        return cls(
            memory=torch.stack([e.memory for e in episodes]),
            memory_labels=torch.stack([e.memory_labels for e in episodes]),
            targets=torch.stack([e.targets for e in episodes]),
            target_labels=torch.stack([e.target_labels for e in episodes]),
            class_ids=torch.stack([e.class_ids for e in episodes]),
            index=torch.tensor([e.index for e in episodes], dtype=torch.int64),
        )


def _move(x, device, non_blocking):
    return x.to(device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x


class EpisodeSampler:
    """Episodes of ``spec`` from ``dataset``'s ``spec.split``, as a pure function of the index.

    ``spec.split`` may be a role (``train``, ``eval``; ``varmem.episodes.roles``): ``self.spec`` holds
    the split it resolved to in this dataset."""

    def __init__(self, dataset: Dataset | str, spec: EpisodeSpec, seed: int = 0):
        self.dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        if self.dataset.kind != "classes":
            raise DataError(
                f"{self.dataset.directory} holds {self.dataset.kind}, not classes: use LakeRunEpisodes for fixed runs"
            )
        split = self.dataset.resolve_split(spec.split)  # a role (train, eval) names the dataset's split
        if spec.augment.enabled and self.dataset.roles.get("eval") == split:
            raise DataError(
                f"episode spec augments episodes (rotations={spec.augment.rotations}, jitter={spec.augment.jitter}) of split "
                f"{split!r}, the eval split of {self.dataset.directory}: augmentation is for training episodes only "
                "(validation and evaluation episodes are never augmented)"
            )
        self.spec = spec if split == spec.split else replace(spec, split=split)
        self.seed = int(seed)
        self.split: Split = self.dataset.split(split)
        spec = self.spec
        spec.check_against(self.split, f"split {spec.split!r} of {self.dataset.directory}")
        if spec.augment.rotations and self.split.image_shape[0] != self.split.image_shape[1]:
            h, w = self.split.image_shape
            raise DataError(f"episode spec augment.rotations turns images by 90°, which needs square images; "
                            f"{self.dataset.directory} holds {h}×{w}")
        # rotated class (c, r) has id id(c) + r · _id_bound: above every class id of the dataset
        self._id_bound = max((int(s.get("class_range", [0, s["classes"]])[1]) for s in self.dataset.manifest["splits"].values()),
                             default=0)
        counts = self.split.class_count
        self._uniform_count = int(counts[0]) if len(counts) and np.all(counts == counts[0]) else None
        if spec.alphabet == "within":
            eligible = [idx for idx in self.split.alphabets.values() if len(idx) >= spec.memory_classes]
            self._alphabet_classes = eligible
        h, w = self.split.image_shape
        self._pixels = h * w

    @property
    def num_classes(self) -> int:
        """The classes episodes are drawn from: the split's, × 4 with ``augment.rotations``."""
        return self.split.num_classes * self.spec.augment.class_factor

    # --- the pure function --------------------------------------------------------------------
    def generator(self, index: int) -> np.random.Generator:
        """The random stream of episode ``index``: Philox keyed by (seed, index)."""
        if index < 0:
            raise DataError(f"episode index must be ≥ 0, got {index}")
        return np.random.Generator(np.random.Philox(key=[self.seed & _SEED_MASK, index & _SEED_MASK]))

    def sample_numpy(self, index: int) -> dict[str, np.ndarray]:
        """Episode ``index`` as numpy arrays (uint8 images unless binarized); see :meth:`episode`."""
        spec, split = self.spec, self.split
        rng = self.generator(index)
        n_mem_classes, ways = spec.memory_classes, spec.ways
        rotations, quarter = spec.augment.rotations, aug_stages.ROTATIONS

        # classes: [C] split-local indices; the first `ways` have targets, the rest are distractors.
        # With rotations, class (c, r) is drawn as c·4 + r among 4N; a rotated alphabet (a, r) is an alphabet.
        turns = None  # [C] quarter turns of each class (rotations only)
        if spec.alphabet == "any":
            if rotations:
                drawn = rng.choice(split.num_classes * quarter, size=n_mem_classes, replace=False)
                classes, turns = drawn // quarter, drawn % quarter
            else:
                classes = rng.choice(split.num_classes, size=n_mem_classes, replace=False)
        else:
            if rotations:
                pick = int(rng.integers(len(self._alphabet_classes) * quarter))
                pool, turns = self._alphabet_classes[pick // quarter], np.full(n_mem_classes, pick % quarter)
            else:
                pool = self._alphabet_classes[rng.integers(len(self._alphabet_classes))]
            classes = pool[rng.choice(len(pool), size=n_mem_classes, replace=False)]

        # images within each class: distinct positions, the first `shots` go to memory
        per_class = spec.images_per_class
        if self._uniform_count is not None:
            keys = rng.random((n_mem_classes, self._uniform_count))
        else:
            counts = split.class_count[classes]
            keys = rng.random((n_mem_classes, int(counts.max())))
            keys[np.arange(keys.shape[1])[None, :] >= counts[:, None]] = 2.0  # never chosen
        picks = np.argsort(keys, axis=1)[:, :per_class]  # [C, per_class]
        mem_pos = picks[:, : spec.shots]  # [C, shots]
        which = None
        if spec.targets_from_memory:
            which = np.argsort(rng.random((ways, spec.shots)), axis=1)[:, : spec.targets]
            tgt_pos = np.take_along_axis(mem_pos[:ways], which, axis=1)  # [ways, targets]
        else:
            tgt_pos = picks[:ways, spec.shots : spec.shots + spec.targets]  # [ways, targets]

        memory = self._gather(classes, mem_pos)  # uint8 [C*shots, H, W]
        targets = self._gather(classes[:ways], tgt_pos)  # uint8 [ways*targets, H, W]
        if rotations:
            memory = aug_stages.rotate(memory, np.repeat(turns, spec.shots))
            targets = aug_stages.rotate(targets, np.repeat(turns[:ways], spec.targets))
        if spec.augment.jitter:
            memory, targets = self._jitter(index, memory, targets, which)
        if spec.binarize == "static":
            cut = spec.threshold * 255.0
            memory, targets = (memory > cut).astype(np.uint8), (targets > cut).astype(np.uint8)
        elif spec.binarize == "dynamic":
            memory = (rng.random(memory.shape, dtype=np.float32) * 255.0 < memory).astype(np.uint8)
            targets = (rng.random(targets.shape, dtype=np.float32) * 255.0 < targets).astype(np.uint8)
        return {
            "memory": memory,
            "memory_labels": np.repeat(np.arange(n_mem_classes), spec.shots),
            "targets": targets,
            "target_labels": np.repeat(np.arange(ways), spec.targets),
            "class_ids": (classes.astype(np.int64) + split.class_range[0] if turns is None
                          else aug_stages.rotated_class_ids(classes + split.class_range[0], turns, self._id_bound)),
        }

    def _jitter(self, index: int, memory: np.ndarray, targets: np.ndarray, which: np.ndarray | None):
        """The jitter stage: memory entry ``p`` through the map of position ``p``, target ``j`` through
        that of position ``M + j`` — or, in the recall task, of the memory entry it copies."""
        spec, m = self.spec, memory.shape[0]
        params = aug_stages.jitter_parameters(spec.augment, self.seed, index, m + targets.shape[0])  # [M+T, 5]
        if which is not None:  # target (i, j) is memory entry i·shots + which[i, j]
            rows = (np.arange(spec.ways)[:, None] * spec.shots + which).reshape(-1)  # [T]
            params = np.concatenate([params[:m], params[rows]])
        out = aug_stages.jitter(np.concatenate([memory, targets]), params)  # uint8 [M+T, H, W]
        return out[:m], out[m:]

    def _gather(self, classes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """uint8 [len(classes) * k, H, W]: image ``positions[i, j]`` of class ``classes[i]``."""
        split = self.split
        rows = split.class_start[classes][:, None] + positions  # [C, k] rows within each class's shard
        if split.single_shard:
            return split.shards[0].images[rows.reshape(-1)]
        shard_of = np.repeat(split.class_shard[classes], positions.shape[1])
        rows = rows.reshape(-1)
        h, w = split.image_shape
        out = np.empty((rows.shape[0], h, w), dtype=np.uint8)
        for s in np.unique(shard_of):
            sel = shard_of == s
            out[sel] = split.shards[s].images[rows[sel]]
        return out

    def episode(self, index: int) -> Episode:
        """Episode ``index`` as tensors (shapes in the module docstring)."""
        a = self.sample_numpy(index)
        scale = 1.0 if self.spec.binarize != "none" else 1.0 / 255.0
        return Episode(
            memory=_to_images(a["memory"], scale),
            memory_labels=torch.from_numpy(a["memory_labels"]),
            targets=_to_images(a["targets"], scale),
            target_labels=torch.from_numpy(a["target_labels"]),
            class_ids=torch.from_numpy(a["class_ids"]),
            index=index,
        )

    def batch(self, indices: list[int] | range) -> EpisodeBatch:
        """Several episodes stacked along a leading G axis."""
        return EpisodeBatch.stack([self.episode(i) for i in indices])


def _to_images(images: np.ndarray, scale: float) -> torch.Tensor:
    """uint8 [n, H, W] → float32 [n, 1, H, W] times ``scale``."""
    t = torch.from_numpy(images).unsqueeze(1).to(torch.float32)
    return t.mul_(scale) if scale != 1.0 else t


class LakeRunEpisodes:
    """Lake et al.'s official 20-way 1-shot runs as fixed episodes (one per run, in run order)."""

    def __init__(self, dataset: Dataset | str, binarize: str = "none", threshold: float = 0.5):
        self.dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        if self.dataset.kind != "lake-runs":
            raise DataError(f"{self.dataset.directory} holds {self.dataset.kind}, not lake-runs")
        if binarize not in ("none", "static"):
            raise DataError(f"Lake runs are fixed episodes: binarize must be 'none' or 'static', got {binarize!r}")
        split = self.dataset.split("lake-runs")
        table = split.shards[0].table
        self._images = split.shards[0].images
        self._run = table.column("run").to_numpy()
        self._role = np.asarray(table.column("role").to_pylist())
        self._label = table.column("label").to_numpy().astype(np.int64)
        self._class = split.shards[0].class_id.astype(np.int64)
        self._item = table.column("item").to_numpy().astype(np.int64)
        self.runs = sorted(set(self._run.tolist()))
        self._scale, self._binarize, self._threshold = 1.0 / 255.0, binarize, threshold

    def __len__(self) -> int:
        return len(self.runs)

    def episode(self, i: int) -> Episode:
        run = self.runs[i]
        mem = np.flatnonzero((self._run == run) & (self._role == "memory"))
        tgt = np.flatnonzero((self._run == run) & (self._role == "target"))
        mem = mem[np.argsort(self._label[mem], kind="stable")]  # memory in class order: label = position
        tgt = tgt[np.argsort(self._item[tgt], kind="stable")]  # targets in the official item order

        def images(rows):
            x = self._images[rows]
            if self._binarize == "static":
                return _to_images((x > self._threshold * 255).astype(np.uint8), 1.0)
            return _to_images(x, self._scale)

        return Episode(
            memory=images(mem),
            memory_labels=torch.from_numpy(self._label[mem]),
            targets=images(tgt),
            target_labels=torch.from_numpy(self._label[tgt]),
            class_ids=torch.from_numpy(self._class[mem]),
            index=i,
        )

    def __iter__(self):
        return (self.episode(i) for i in range(len(self)))
