"""The typed run configuration: one YAML file per run, validated on construction, saved with the run.

A run config has seven sections::

    data      where the episodes come from: dataset directory, expected image size, splits (or roles), binarization
    episode   the training and evaluation episode shapes (ways, shots, targets, ...)
    model     the model family (``name``) and its typed config (``varmem.models.registry``)
    optim     Adam and gradient clipping
    train     steps, episodes per step, seed, posterior samples, logging/validation/checkpoint cadence
    run       the run directory (a path, or a URI on object storage: s3://bucket/runs/NAME)
    storage   the S3 endpoint for s3:// URIs and the per-node shard cache (nothing secret: credentials come
              from the environment, varmem.episodes.storage)

Load with :meth:`RunConfig.load` (a YAML file plus ``section.key=value`` overrides, each value
parsed as YAML and checked against the field's type), save with :meth:`RunConfig.save` (every
default filled in). Every problem raises :class:`ConfigError` naming the field and the value;
nothing is written before the whole config is valid.

This module must stay importable without torch: ``varmem data ...`` imports the CLI's error types.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from varmem.typed import (  # noqa: F401  (re-exported)
    ConfigError, Section, as_bytes, check_fields, check_value, is_utf8, plain, shown,
)

from varmem.episodes.augment import Augmentation
from varmem.episodes.errors import DataError
from varmem.episodes.files import atomic_write_text as _atomic_write_text
from varmem.episodes.spec import ALPHABET_MODES, BINARIZE_MODES, EpisodeSpec

CONFIG_FILE = "config.yaml"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite (the message names the step and the last checkpoint)."""


class RunDirError(RuntimeError):
    """A file of a run directory cannot be written (a full disk, no permission) or read (every checkpoint
    corrupt); the message names the file, says what is intact and what to do."""


# --- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig(Section):
    section: ClassVar[str] = "data"

    dir: str = "data/strokes26"  # dataset directory or URI (s3://, gs://, hdfs://, file://; `varmem data build ... --out DIR`)
    image_size: int = 26  # checked against the dataset's manifest before training; 0 = accept any
    # The splits of the training and of the validation/evaluation episodes: a split name, or a role that
    # every dataset maps to its own split (varmem.episodes.roles): "train" (background | train) and "eval"
    # (evaluation | test). A name the dataset lacks resolves through its role, so these defaults train and
    # validate on a release build (background/evaluation) and on an --split alphabets|characters build (train/test).
    train_split: str = "background"
    eval_split: str = "evaluation"
    binarize: str = "none"  # "none" (grey levels in [0, 1]) | "static" (> threshold) | "dynamic" (Bernoulli(pixel))
    threshold: float = 0.5  # for binarize: static
    # Check each shard's sha256 against the manifest when the dataset is opened (cheap after the first
    # time: a per-shard "verified" stamp of size, times and inode; varmem.episodes.stamps). false (or
    # --no-verify-shards, or VARMEM_VERIFY_SHARDS=0) trusts the shards as they are.
    verify_shards: bool = True

    def validate(self) -> None:
        self._require(bool(self.dir), "dir", "a dataset directory")
        self._require(self.image_size >= 0, "image_size", "≥ 0 (0 = any)")
        self._require(bool(self.train_split), "train_split", "a split name or a role (train, eval)")
        self._require(bool(self.eval_split), "eval_split", "a split name or a role (train, eval)")
        self._require(self.binarize in BINARIZE_MODES, "binarize", f"one of {', '.join(BINARIZE_MODES)}")
        self._require(0.0 <= self.threshold <= 1.0, "threshold", "in [0, 1]")


@dataclass(frozen=True)
class EpisodeShape:
    """The fields of an :class:`varmem.episodes.spec.EpisodeSpec` that are not the data section's (split, binarize)."""

    ways: int = 8  # classes with targets
    shots: int = 4  # memory entries per class
    targets: int = 4  # targets per class
    distractors: int = 0  # classes in memory only
    alphabet: str = "any"  # "any" | "within" (all classes from one alphabet)
    targets_from_memory: bool = False  # the recall task: targets are memory entries
    # Augmentation stages of the episode sampler (varmem.episodes.augment), pure functions of (seed, episode index),
    # all off by default (the VMA paper used none). episode.train only: episode.eval refuses them, so validation
    # and `varmem eval` episodes are never augmented.
    #   rotations       90° rotations as new classes: each class c becomes 4 classes (c, r), r·90° counter-clockwise;
    #                   within-alphabet episodes take one alphabet at one rotation
    #   jitter          a small affine map per image: rotation ~ U(±jitter_degrees), shift ~ U(±jitter_shift) pixels
    #                   per axis, scale ~ U(1 ± jitter_scale), shear ~ U(±jitter_shear) degrees; bilinear
    augment: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            object.__setattr__(self, f.name, check_value(getattr(self, f.name), hints[f.name], f"episode field {f.name}"))
        if isinstance(self.augment, dict):  # check_value hands a nested dataclass back as its checked dict
            object.__setattr__(self, "augment", Augmentation(**self.augment))


@dataclass(frozen=True)
class EpisodeConfig(Section):
    section: ClassVar[str] = "episode"

    train: EpisodeShape = field(default_factory=EpisodeShape)  # the VMA training episode: 8 × 4 targets, 4 others in memory
    eval: EpisodeShape = field(default_factory=EpisodeShape)  # validation and `varmem eval` episodes

    def __post_init__(self) -> None:
        for name in ("train", "eval"):
            value = getattr(self, name)
            try:
                if isinstance(value, dict):
                    value = EpisodeShape(**check_fields(EpisodeShape, value, f"episode.{name}"))
                elif not isinstance(value, EpisodeShape):
                    raise ConfigError(f"episode.{name} must be a mapping of episode fields, got {shown(value)}")
            except ConfigError as exc:  # Augmentation's range checks name augment.<field>: say whose
                raise ConfigError(f"episode.{name}.{exc}" if str(exc).startswith(f"{Augmentation.section}.") else str(exc)) from None
            object.__setattr__(self, name, value)
            if name == "eval":
                for stage in ("rotations", "jitter"):
                    if getattr(value.augment, stage):
                        raise ConfigError(f"episode.eval.augment.{stage} must be false: validation and evaluation episodes "
                                          "are never augmented (set it in episode.train.augment)")
            if value.alphabet not in ALPHABET_MODES:
                raise ConfigError(f"episode.{name}.alphabet must be one of {', '.join(ALPHABET_MODES)}, got {value.alphabet!r}")
            try:
                EpisodeSpec(**dataclasses.asdict(value))  # the spec's own range checks
            except DataError as exc:
                raise ConfigError(f"episode.{name}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str | None = None):
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"episode must be a mapping with 'train' and 'eval', got {shown(data)}")
        unknown = sorted(set(data) - {"train", "eval"}, key=repr)
        if unknown:
            raise ConfigError(f"episode: unknown key {shown(unknown[0])} (known: train, eval)")
        for name in ("train", "eval"):
            if name in data and isinstance(data[name], dict):
                for reserved, owner in (("split", f"data.{name}_split"), ("binarize", "data.binarize"), ("threshold", "data.threshold")):
                    if reserved in data[name]:
                        raise ConfigError(f"episode.{name}.{reserved}: set it as {owner} (the data section owns it)")
        return cls(**{k: v for k, v in data.items()})


@dataclass(frozen=True)
class OptimConfig(Section):
    section: ClassVar[str] = "optim"

    lr: float = 1e-4  # Adam step size; the VMA paper searched {1e-4, 3e-4}
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # L2 on every parameter (Adam's weight_decay)
    grad_clip: float = 10.0  # clip the global gradient norm to this; 0 = no clipping (the norm is still logged)

    def validate(self) -> None:
        self._require(self.lr > 0, "lr", "> 0")
        self._require(all(0.0 <= b < 1.0 for b in self.betas), "betas", "two numbers in [0, 1)")
        self._require(self.eps > 0, "eps", "> 0")
        self._require(self.weight_decay >= 0, "weight_decay", "≥ 0")
        self._require(self.grad_clip >= 0, "grad_clip", "≥ 0 (0 = no clipping)")


DEVICES = ("auto", "cpu", "cuda")
NOISE_MODES = ("episode", "rank")


@dataclass(frozen=True)
class TrainConfig(Section):
    section: ClassVar[str] = "train"

    steps: int = 10_000  # optimizer steps
    episodes_per_step: int = 1  # episodes per step per rank (G); the VMA episode is already a minibatch of 32 targets
    seed: int = 0  # seeds torch, numpy and Python, and the training episodes
    num_samples: int = 4  # K posterior samples per target for the gradient, KL estimates and bound (VMA: 4)
    log_every: int = 50  # steps between progress lines / metrics.jsonl rows
    val_every: int = 1_000  # steps between validation bounds (and at the end); 0 = only at the end
    val_episodes: int = 16  # fixed validation episodes from data.eval_split
    val_samples: int = 100  # importance samples of the validation NLL bound
    val_seed: int = 1  # seed of the validation (and `varmem eval`) episodes and of their importance samples
    eval_batch: int = 4  # episodes per forward pass in validation and `varmem eval`
    chunk: int = 100  # importance samples per pass in log_likelihood (bounds memory)
    checkpoint_every: int = 1_000  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3  # the newest N checkpoints are kept
    device: str = "auto"  # "auto" (cuda when available) | "cpu" | "cuda"; a Ray worker's context overrides it
    # torch intra-op CPU threads; 0 = torch's default. On a shared 2-core machine (load ≈ 5) an 8-step run of a
    # tiny model took 4–12 s with 2 threads and 0.3–0.6 s with 1: oversubscribed threads stall each other.
    threads: int = 0
    # VMA's decoder runs the half of each stage convolution that reads a memory entry's skip features once per
    # entry, not once per (target, sample) that reads it (models/networks.py, ConvDecoder.shared_skips): the same
    # function up to float rounding, fewer FLOPs. false = the concatenation per sample, as before 2026-12.
    shared_skip_convs: bool = True
    # Conv weights, and so the conv activations, in channels-last (NHWC) memory format (models/networks.py,
    # set_channels_last). Measured on CPU only (oneDNN, 1 thread): with shared_skip_convs 1.18–1.33× fewer CPU-ms
    # per VMA step (benchmarks/results/train_fast_step_cpu.csv); false = NCHW, as before 2026-12.
    channels_last: bool = True
    # Where the posterior samples' noise comes from. "episode": each episode's noise is seeded by (seed, its
    # global episode index), so a run is the same whatever the number of workers (W workers × G episodes per
    # step == 1 process × W·G, within float tolerance): one objective call per episode. "rank": one stream
    # per rank seeded by (seed, rank) and one batched objective call over the rank's G episodes: faster when
    # episodes_per_step > 1, but the trajectory depends on the number of workers.
    noise: str = "episode"
    # Start a fresh run (a fresh optimizer, step 0) from another run's model weights: a run directory (its newest
    # intact checkpoint), one checkpoint file, or a URI of either (`varmem train --init-from`; distributed/init_from.py).
    # The run records the exact file as PATH#sha256=HEX (of its bytes, checked when it is loaded). "" = no init.
    # The model section must build the source's parameter shapes; the data section may differ.
    init_from: str = ""
    # A CPU-time budget in seconds (`varmem train --cpu-budget`; null = none, train.steps alone ends the run): the run
    # stops at the first step boundary where its CPU time reaches it, then validates and checkpoints as at train.steps;
    # final_metrics.json says stopped_by "cpu_budget" or "steps". The run's CPU time (`cpu_s` in metrics.jsonl rows and
    # final_metrics.json) is time.process_time of the training process — all its threads: steps, episode prefetch,
    # validation (it counts: keep val_every sparse), checkpoints — from the call of the training loop, plus the earlier
    # sessions' (each checkpoint records the sum; --resume continues from it), summed over the Ray workers with
    # --workers N. Work lost after the last checkpoint of a crashed session is not counted.
    cpu_budget_s: float | None = None

    def validate(self) -> None:
        for name in ("steps", "episodes_per_step", "num_samples", "log_every", "val_episodes", "val_samples",
                     "eval_batch", "chunk", "checkpoint_every", "keep_checkpoints"):
            self._require(getattr(self, name) >= 1, name, "≥ 1")
        self._require(self.val_every >= 0, "val_every", "≥ 0 (0 = only at the end)")
        self._require(self.seed >= 0, "seed", "≥ 0")
        self._require(self.val_seed >= 0, "val_seed", "≥ 0")
        self._require(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        self._require(self.threads >= 0, "threads", "≥ 0 (0 = torch's default)")
        self._require(isinstance(self.shared_skip_convs, bool), "shared_skip_convs", "true or false")
        self._require(isinstance(self.channels_last, bool), "channels_last", "true or false")
        self._require(self.noise in NOISE_MODES, "noise", f"one of {', '.join(NOISE_MODES)}")
        self._require(self.init_from.isprintable() and self.init_from.strip() == self.init_from, "init_from",
                      "a run directory, checkpoint or URI on one line without surrounding spaces (\"\" = none)")
        digest = self.init_from.rpartition("#sha256=")[2] if "#sha256=" in self.init_from else "0" * 64
        self._require(len(digest) == 64 and set(digest) <= set("0123456789abcdef"), "init_from",
                      "PATH#sha256=<64 lowercase hex digits> where it records a hash")
        self._require(self.cpu_budget_s is None or self.cpu_budget_s > 0, "cpu_budget_s",
                      "> 0 CPU seconds (null = no budget: train.steps ends the run)")


@dataclass(frozen=True)
class RunSection(Section):
    section: ClassVar[str] = "run"

    # the run directory: config.yaml, checkpoints/, metrics.jsonl, final_metrics.json; a URI (s3://bucket/runs/x) keeps
    # them on object storage (distributed/remote_run.py), the checkpoints in Ray Train's storage there
    out: str = "runs/default"
    tensorboard: bool = True  # write TensorBoard events to RUN_DIR/tensorboard (rank 0)

    def validate(self) -> None:
        self._require(bool(self.out), "out", "a directory")


@dataclass(frozen=True)
class StorageConfig(Section):
    """Where URIs lead and where a node keeps the shards it fetches (varmem.episodes.storage, shard_cache).
    Nothing secret: S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
    AWS_PROFILE, ~/.aws or a role, on every node, never from a config."""

    section: ClassVar[str] = "storage"

    # An S3-compatible server for s3:// URIs (MinIO, Ceph, moto): http://HOST:PORT. "" = AWS_ENDPOINT_URL_S3 or
    # AWS_ENDPOINT_URL from each process's environment, else AWS itself.
    s3_endpoint: str = ""
    # The per-node cache of shards fetched from object storage. "" = VARMEM_CACHE_DIR on each node, else
    # $XDG_CACHE_HOME/varmem/shards (~/.cache/varmem/shards).
    cache_dir: str = ""
    # Its size limit in bytes (least recently used shards go first); 0 = VARMEM_CACHE_BYTES, else 50 GB.
    cache_bytes: int = 0

    def validate(self) -> None:
        if self.s3_endpoint:
            from varmem.episodes.storage import StorageError, check_endpoint

            try:
                check_endpoint(self.s3_endpoint, "storage.s3_endpoint")
            except StorageError as exc:
                raise ConfigError(str(exc)) from None
        self._require(self.cache_bytes >= 0, "cache_bytes", "≥ 0 (0 = VARMEM_CACHE_BYTES, else 50 GB)")

    def apply(self) -> None:
        """Make this process's URIs and shard cache follow this section."""
        from varmem.episodes import shard_cache, storage

        storage.configure(self.s3_endpoint or None)
        shard_cache.configure(self.cache_dir or None, self.cache_bytes or None)


# --- the model section ------------------------------------------------------------------------
# ``model: {name: <family>, <field>: ...}``: typed by the family's config dataclass, found through
# varmem.models.registry by name. Nothing in a config imports code: a family outside varmem is
# loaded with --plugin / VARMEM_PLUGINS / an entry point, never by a config field.

NUM_SAMPLES = "num_samples"
# The fields of the one flat model config of varmem ≤ 0.1 (saved in older runs' config.yaml with
# every default): a key of these that the run's family does not have is dropped when an old run is read.
LEGACY_MODEL_KEYS = ("architecture", "z_dim", "match_dim", "channels", "hidden", "mlp_hidden", "prior", "memory",
                     "learned_memory_size", "similarity", "vimco_variant", "num_samples", "read_dim")


def _family(name: Any):
    from varmem.models.registry import family

    return family(name)


def model_section(model: Any, *, legacy: bool = False):
    """The family config of a ``model`` section (a dict with ``name``, default "vma", or a FamilyConfig)."""
    from varmem.models.registry import FamilyConfig, model_config

    if isinstance(model, FamilyConfig):
        return model
    if not isinstance(model, dict):
        raise ConfigError(f"model must be a mapping with the family's name and its fields, got {shown(model)}")
    if "factory" in model:
        raise ConfigError("model.factory is no longer read: a config cannot import code. Register the family in "
                          "a module and name it with --plugin MODULE (or VARMEM_PLUGINS), then set model.name")
    if legacy and isinstance(model.get("name", "vma"), str):  # (model_config names a name of another type)
        known = {f.name for f in dataclasses.fields(_family(model.get("name", "vma")).config)} | {"name"}
        model = {k: v for k, v in model.items() if k in known or k not in LEGACY_MODEL_KEYS}
    return model_config(model)


def _switch_family(model: dict[str, Any], old: str, new: str, item: str) -> dict[str, Any]:
    """``--set model.name=NEW``: keep the fields NEW knows; drop OLD's others where they hold OLD's
    default; refuse to drop one that was set to something else (it would be lost silently)."""
    new_fields = {f.name for f in dataclasses.fields(_family(new).config)}
    old_defaults = _family(old).config().to_dict() if old != new else {}
    out = {"name": new}
    for key, value in model.items():
        if key == "name":
            continue
        if key in new_fields:
            out[key] = value
        elif key in old_defaults and old_defaults[key] != value:
            raise ConfigError(f"--set {shown_item(item)}: model.{key}={shown(value)} is a field of family {old!r}, not of {new!r}; "
                              f"remove it (or set it back to {shown(old_defaults[key])}) before changing the family")
    return out


# --- the run config ---------------------------------------------------------------------------

SECTIONS = ("data", "episode", "model", "optim", "train", "run", "storage")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    model: Any = field(default_factory=dict)  # the family's typed config (varmem.models.registry), from {name, fields}
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSection = field(default_factory=RunSection)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("episode", EpisodeConfig), ("optim", OptimConfig),
                          ("train", TrainConfig), ("run", RunSection), ("storage", StorageConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        object.__setattr__(self, "model", model_section(self.model))
        family = _family(type(self.model).family)
        k_min = family.model.min_num_samples
        if self.train.num_samples < k_min:
            raise ConfigError(f"train.num_samples={self.train.num_samples} is too small for the {family.name!r} family: "
                              f"it needs K >= {k_min} posterior samples per target")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, legacy: bool = False) -> "RunConfig":
        """A run config from its sections. ``legacy=True`` (a saved run's config.yaml) drops the old flat
        model config's fields that the run's family does not have."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"a run config is a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS), key=repr)  # keys of any type: a YAML mapping may hold 1: or null:
        if unknown:
            raise ConfigError(f"unknown section {shown(unknown[0])} (known: {', '.join(SECTIONS)})")
        for name in SECTIONS:
            if data.get(name) is not None and not isinstance(data[name], dict):
                raise ConfigError(f"section {name} must be a mapping, got {shown(data[name])}")
        model, train = dict(data.get("model") or {}), dict(data.get("train") or {})
        if NUM_SAMPLES in model:  # K is train.num_samples; model.num_samples is read as its old name
            k = model.pop(NUM_SAMPLES)
            if train.setdefault(NUM_SAMPLES, k) != k:
                raise ConfigError(f"model.num_samples={shown(k)} and train.num_samples={shown(train[NUM_SAMPLES])} disagree: "
                                  "K (posterior samples per target) is train.num_samples; set only that")
        return cls(
            data=DataConfig.from_dict(data.get("data")),
            episode=EpisodeConfig.from_dict(data.get("episode")),
            model=model_section(model, legacy=legacy),
            optim=OptimConfig.from_dict(data.get("optim")),
            train=TrainConfig.from_dict(train),
            run=RunSection.from_dict(data.get("run")),
            storage=StorageConfig.from_dict(data.get("storage")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path, *, legacy: bool = True) -> "RunConfig":
        """A saved config file (a run's config.yaml); the old flat model fields are read (``legacy``)."""
        try:
            return cls.from_dict(read_yaml(path), legacy=legacy)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> "RunConfig":
        """The config in ``path`` (defaults when None) with ``section.key=value`` overrides applied in order."""
        raw = read_yaml(path) if path is not None else {}
        try:
            config = cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return config.with_overrides(overrides)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> "RunConfig":
        """A new config with each ``section.key[.key]=value`` applied (value parsed as YAML, then type-checked)."""
        config = self
        for item in overrides:
            key, value = parse_override(item)
            raw = config.to_dict()
            set_path(raw, key, value, item)
            if key == "model.num_samples":  # the old name of train.num_samples
                raw["train"][NUM_SAMPLES] = raw["model"].pop(NUM_SAMPLES)
            if key == "model.name":
                raw["model"] = _switch_family(raw["model"], config.model.family, raw["model"]["name"], item)
            try:
                config = type(self).from_dict(raw)
            except ConfigError as exc:
                raise ConfigError(f"--set {shown_item(item)}: {exc}") from None
        return config

    # --- derived objects ----------------------------------------------------------------------
    def train_spec(self) -> EpisodeSpec:
        return self._spec(self.episode.train, self.data.train_split)

    def eval_spec(self) -> EpisodeSpec:
        return self._spec(self.episode.eval, self.data.eval_split)

    def _spec(self, shape: EpisodeShape, split: str) -> EpisodeSpec:
        return EpisodeSpec(split=split, binarize=self.data.binarize, threshold=self.data.threshold, **dataclasses.asdict(shape))

    def resolve_splits(self, dataset: Any) -> "RunConfig":
        """A copy whose ``data.train_split`` / ``data.eval_split`` are the splits they name in ``dataset``
        (a :class:`varmem.episodes.dataset.Dataset`): a role, or a name the dataset lacks, becomes the split
        of its role there. ConfigError naming the field, the dataset, the role and its splits otherwise.
        Resolve where the dataset is opened; the saved config keeps the names as written."""
        resolved = {}
        for key in ("train_split", "eval_split"):
            try:
                resolved[key] = dataset.resolve_split(getattr(self.data, key))
            except DataError as exc:
                raise ConfigError(f"data.{key}: {exc}") from None
        return dataclasses.replace(self, data=dataclasses.replace(self.data, **resolved))

    def resolve_paths(self, base: str | Path | None = None) -> "RunConfig":
        """A copy with ``data.dir``, ``run.out`` and ``storage.cache_dir`` absolute (relative to ``base``, default
        the working directory); a URI stays as it is (a ``file://`` one becomes its path). Ray workers change
        directory: resolve in the driver before handing the config over."""
        from varmem.episodes.storage import display, is_remote, is_uri, location

        base = Path(base) if base is not None else Path.cwd()

        def absolute(p: str) -> str:
            if is_remote(p):
                return display(p) if "?" not in p else p  # the URI, a pathlib-mangled one repaired
            if is_uri(p):
                return location(p).path
            p = Path(p).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())

        return dataclasses.replace(
            self,
            data=dataclasses.replace(self.data, dir=absolute(self.data.dir)),
            run=dataclasses.replace(self.run, out=absolute(self.run.out)),
            storage=dataclasses.replace(self.storage, cache_dir=absolute(self.storage.cache_dir)
                                        if self.storage.cache_dir else ""),
        )

    # --- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(),
            "episode": self.episode.to_dict(),
            "model": self.model.to_dict(),
            "optim": self.optim.to_dict(),
            "train": self.train.to_dict(),
            "run": self.run.to_dict(),
            "storage": self.storage.to_dict(),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/config.yaml`` atomically (every default filled in); returns the path. ``run_dir``
        may be a URI or a :class:`varmem.episodes.storage.Location` (one PUT on object storage)."""
        from varmem.episodes.storage import Location, is_remote, location

        if isinstance(run_dir, Location) or is_remote(run_dir):
            target = location(run_dir).child(CONFIG_FILE)
            target.write_text(self.to_yaml())
            return target  # type: ignore[return-value]
        path = Path(run_dir) / CONFIG_FILE
        atomic_write_text(path, self.to_yaml())
        return path

    def differences(self, other: "RunConfig") -> list[str]:
        """``section.key: a -> b`` for every field that differs."""
        out: list[str] = []
        _diff(self.to_dict(), other.to_dict(), "", out)
        return out


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            _diff(a.get(key), b.get(key), f"{where}.{key}" if where else key, out)
    elif a != b:
        out.append(f"{where}: {a!r} -> {b!r}")


# --- helpers ----------------------------------------------------------------------------------


def read_text_file(path: str | Path, what: str = "config file", error: type[ConfigError] = ConfigError) -> str:
    """The UTF-8 text of the regular file at ``path``; anything else (missing, a folder or device, unreadable,
    binary or not UTF-8) is ``error`` naming ``what`` and the path."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise error(f"{what} {path} is {kind}: give a YAML file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                    f"a binary file? Give the YAML file itself") from None


def parse_yaml(text: str, where: str, error: type[ConfigError] = ConfigError) -> Any:
    """``text`` parsed as YAML (safe_load); bad YAML is ``error`` naming ``where`` and, where known, the
    line and column. Values YAML reads but Python cannot build (an integer of 5,000 digits, lists nested
    thousands deep) are errors too."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise error(f"{where} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply to read") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise error(f"{where}: a value YAML cannot convert: {exc}") from None


def load_yaml_file(path: str | Path, what: str = "config file", error: type[ConfigError] = ConfigError) -> Any:
    """The YAML document at ``path``; a missing, unreadable or binary file or bad YAML is ``error``
    naming ``what``, the path and, for bad YAML, the line and column."""
    return parse_yaml(read_text_file(path, what, error), f"{what} {path}", error)


def read_yaml(path: str | Path) -> dict[str, Any]:
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` → ``("optim.lr", 0.0003)``: the value parsed as YAML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {shown(item)}: expected section.key=value, e.g. optim.lr=3e-4")
    if not is_utf8(item):  # bytes that are not UTF-8 in the argument (Python keeps them as surrogates)
        raise ConfigError(f"--set {as_bytes(item)}: not UTF-8 text; write the value in UTF-8")
    if "\x00" in item:
        raise ConfigError(f"--set {shown(item)}: a NUL character is not allowed")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: keep the text, the field's type check decides
    except (RecursionError, ValueError):  # nested thousands deep; an integer of thousands of digits
        raise ConfigError(f"--set {shown(item)}: a value YAML reads but cannot convert; give a plain value") from None
    return key, value


def shown_item(item: str) -> str:
    """A ``--set`` argument for a one-line message: as given, or its repr when it holds a line break or
    another character that does not print."""
    return item if item.isprintable() else shown(item)


def set_path(raw: dict[str, Any], key: str, value: Any, item: str) -> None:
    """Set ``raw[a][b]... = value`` for key "a.b..."; unknown sections and keys of typed sections raise."""
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {shown_item(item)}: the key must be section.key (sections: {', '.join(SECTIONS)})")
    section = parts[0]
    if section not in SECTIONS:
        raise ConfigError(f"--set {shown_item(item)}: unknown section {shown(section)} (known: {', '.join(SECTIONS)})")
    node = raw[section]
    for depth, part in enumerate(parts[1:-1], start=1):
        if part not in node or not isinstance(node[part], dict):
            known = ", ".join(k for k, v in node.items() if isinstance(v, dict)) or "none"
            raise ConfigError(f"--set {shown_item(item)}: {'.'.join(parts[:depth])} has no section {shown(part)} (known: {known})")
        node = node[part]
    last = parts[-1]
    reserved = section == "episode" and last in ("split", "binarize", "threshold")  # from_dict names their owner
    if last not in node and not reserved and not (section == "model" and last == NUM_SAMPLES):
        where = ".".join(parts[:-1])
        raise ConfigError(f"--set {shown_item(item)}: unknown key {shown(last)} in {where} (known: {', '.join(node)})")
    node[last] = value


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    _atomic_write_text(path, text)
