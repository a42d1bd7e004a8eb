"""The typed run configuration: one YAML file per run, validated on construction, saved with the run.

A run config has six sections::

    data      where the episodes come from: dataset directory, expected image size, splits, binarization
    episode   the training and evaluation episode shapes (ways, shots, targets, ...)
    model     the model's own config (``models.config.ModelConfig`` fields), passed through
    optim     Adam and gradient clipping
    train     steps, episodes per step, seed, posterior samples, logging/validation/checkpoint cadence
    run       the run directory

Load with :meth:`RunConfig.load` (a YAML file plus ``section.key=value`` overrides, each value
parsed as YAML and checked against the field's type), save with :meth:`RunConfig.save` (every
default filled in). Every problem raises :class:`ConfigError` naming the field and the value;
nothing is written before the whole config is valid.

This module must stay importable without torch: ``varmem data ...`` imports the CLI's error types.
"""
from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from episodes.errors import DataError
from episodes.files import atomic_write_text as _atomic_write_text
from episodes.spec import ALPHABET_MODES, BINARIZE_MODES, EpisodeSpec

CONFIG_FILE = "config.yaml"


class ConfigError(ValueError):
    """A run config (file, ``--set`` override or saved run) is not what it must be."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite (the message names the step and the last checkpoint)."""


# --- generic typed fields ---------------------------------------------------------------------


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked (and mildly coerced) against ``annotation``; ConfigError naming ``where``.

    Understands bool, int, float, str, tuple[X, ...], tuple[X, Y], X | None, Literal, list, dict
    and nested dataclasses (returned as their dict, checked field by field). Coercions: an int
    where a float is expected; a string that parses as a float where a float is expected
    (YAML 1.1 reads ``1e-4`` as a string); a list where a tuple is expected; an int or float
    where a str is expected (``--set run.out=2024``). Anything else of the wrong type is an error.
    """
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {annotation}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, dict) or annotation in (list, dict):
        base = origin or annotation
        if not isinstance(value, base):
            raise ConfigError(f"{where} must be a {base.__name__}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {annotation.__name__} fields, got {value!r}")
        return check_fields(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value  # a type this checker does not know: left to the owner's own validation


def check_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with every key checked against dataclass ``cls``'s field types; unknown keys raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    out = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        out[key] = check_value(value, hints[key], f"{where}.{key}")
    return out


class Section:
    """A config section: a dataclass whose fields are type-checked and range-checked on construction."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            checked = check_value(getattr(self, f.name), hints[f.name], f"{self.section}.{f.name}")
            object.__setattr__(self, f.name, checked)
        self.validate()

    def validate(self) -> None:
        """Range checks; raise ConfigError naming the field and the value."""

    def _require(self, ok: bool, name: str, requirement: str) -> None:
        if not ok:
            raise ConfigError(f"{self.section}.{name} must be {requirement}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str | None = None):
        return cls(**check_fields(cls, data or {}, where or cls.section))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    """YAML-friendly: tuples as lists, dataclasses as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig(Section):
    section: ClassVar[str] = "data"

    dir: str = "data/strokes26"  # dataset directory (`varmem data build ... --out DIR`)
    image_size: int = 26  # checked against the dataset's manifest before training; 0 = accept any
    train_split: str = "background"  # split of the training episodes
    eval_split: str = "evaluation"  # split of the validation and evaluation episodes
    binarize: str = "none"  # "none" (grey levels in [0, 1]) | "static" (> threshold) | "dynamic" (Bernoulli(pixel))
    threshold: float = 0.5  # for binarize: static

    def validate(self) -> None:
        self._require(bool(self.dir), "dir", "a dataset directory")
        self._require(self.image_size >= 0, "image_size", "≥ 0 (0 = any)")
        self._require(bool(self.train_split), "train_split", "a split name")
        self._require(bool(self.eval_split), "eval_split", "a split name")
        self._require(self.binarize in BINARIZE_MODES, "binarize", f"one of {', '.join(BINARIZE_MODES)}")
        self._require(0.0 <= self.threshold <= 1.0, "threshold", "in [0, 1]")


@dataclass(frozen=True)
class EpisodeShape:
    """The fields of an :class:`episodes.spec.EpisodeSpec` that are not the data section's (split, binarize)."""

    ways: int = 8  # classes with targets
    shots: int = 4  # memory entries per class
    targets: int = 4  # targets per class
    distractors: int = 0  # classes in memory only
    alphabet: str = "any"  # "any" | "within" (all classes from one alphabet)
    targets_from_memory: bool = False  # the recall task: targets are memory entries

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            object.__setattr__(self, f.name, check_value(getattr(self, f.name), hints[f.name], f"episode field {f.name}"))


@dataclass(frozen=True)
class EpisodeConfig(Section):
    section: ClassVar[str] = "episode"

    train: EpisodeShape = field(default_factory=EpisodeShape)  # the VMA training episode: 8 × 4 targets, 4 others in memory
    eval: EpisodeShape = field(default_factory=EpisodeShape)  # validation and `varmem eval` episodes

    def __post_init__(self) -> None:
        for name in ("train", "eval"):
            value = getattr(self, name)
            if isinstance(value, dict):
                value = EpisodeShape(**check_fields(EpisodeShape, value, f"episode.{name}"))
            elif not isinstance(value, EpisodeShape):
                raise ConfigError(f"episode.{name} must be a mapping of episode fields, got {value!r}")
            object.__setattr__(self, name, value)
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
            raise ConfigError(f"episode must be a mapping with 'train' and 'eval', got {data!r}")
        unknown = sorted(set(data) - {"train", "eval"})
        if unknown:
            raise ConfigError(f"episode: unknown key {unknown[0]!r} (known: train, eval)")
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
    # Where the posterior samples' noise comes from. "episode": each episode's noise is seeded by (seed, its
    # global episode index), so a run is the same whatever the number of workers (W workers × G episodes per
    # step == 1 process × W·G, within float tolerance): one objective call per episode. "rank": one stream
    # per rank seeded by (seed, rank) and one batched objective call over the rank's G episodes: faster when
    # episodes_per_step > 1, but the trajectory depends on the number of workers.
    noise: str = "episode"

    def validate(self) -> None:
        for name in ("steps", "episodes_per_step", "num_samples", "log_every", "val_episodes", "val_samples",
                     "eval_batch", "chunk", "checkpoint_every", "keep_checkpoints"):
            self._require(getattr(self, name) >= 1, name, "≥ 1")
        self._require(self.val_every >= 0, "val_every", "≥ 0 (0 = only at the end)")
        self._require(self.seed >= 0, "seed", "≥ 0")
        self._require(self.val_seed >= 0, "val_seed", "≥ 0")
        self._require(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        self._require(self.threads >= 0, "threads", "≥ 0 (0 = torch's default)")
        self._require(self.noise in NOISE_MODES, "noise", f"one of {', '.join(NOISE_MODES)}")


@dataclass(frozen=True)
class RunSection(Section):
    section: ClassVar[str] = "run"

    out: str = "runs/default"  # the run directory: config.yaml, checkpoints/, metrics.jsonl, final_metrics.json
    tensorboard: bool = True  # write TensorBoard events to RUN_DIR/tensorboard (rank 0)

    def validate(self) -> None:
        self._require(bool(self.out), "out", "a directory")


# --- the model section ------------------------------------------------------------------------

FACTORY_KEY = "factory"  # model.factory: "module:function" builds a model outside models.config (tests, research)


def model_config_class() -> type | None:
    """``models.config.ModelConfig`` when the models package provides it, else None."""
    try:
        module = importlib.import_module("models.config")
    except ModuleNotFoundError as exc:
        if exc.name in ("models.config", "models"):
            return None
        raise
    return getattr(module, "ModelConfig", None)


def resolve_factory(spec: str):
    """The callable named by ``model.factory`` ("package.module:function")."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model.factory must be 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.factory {spec!r}: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"model.factory {spec!r}: {module_name} has no callable {attr!r}")
    return fn


def check_model_section(model: dict[str, Any]) -> dict[str, Any]:
    """The model section with every ModelConfig default filled in (unchanged when a factory builds it
    or when ``models.config`` is not importable yet)."""
    if not isinstance(model, dict):
        raise ConfigError(f"model must be a mapping of model config fields, got {model!r}")
    if FACTORY_KEY in model:
        if not isinstance(model[FACTORY_KEY], str):
            raise ConfigError(f"model.factory must be 'package.module:function', got {model[FACTORY_KEY]!r}")
        return dict(model)
    cls = model_config_class()
    if cls is None:
        return dict(model)
    cfg = model_config_from_dict(cls, model)
    to_dict = getattr(cfg, "to_dict", None)
    filled = to_dict() if callable(to_dict) else dataclasses.asdict(cfg)
    return _plain(filled)


def model_config_from_dict(cls: type, model: dict[str, Any]):
    """``cls.from_dict(model)`` with our type checks first; the model's own errors become ConfigError."""
    if dataclasses.is_dataclass(cls):
        model = check_fields(cls, model, "model")
    try:
        return cls.from_dict(model) if hasattr(cls, "from_dict") else cls(**model)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"model: {exc}") from None


NUM_SAMPLES = "num_samples"


def _model_has_num_samples(model: dict[str, Any]) -> bool:
    if FACTORY_KEY in model:
        return False
    cls = model_config_class()
    return cls is not None and dataclasses.is_dataclass(cls) and NUM_SAMPLES in {f.name for f in fields(cls)}


# --- the run config ---------------------------------------------------------------------------

SECTIONS = ("data", "episode", "model", "optim", "train", "run")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    model: dict[str, Any] = field(default_factory=dict)  # models.config.ModelConfig fields (or model.factory + its kwargs)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("episode", EpisodeConfig), ("optim", OptimConfig),
                          ("train", TrainConfig), ("run", RunSection)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        # K lives in train.num_samples (the trainer passes it to ``objective``) and in ModelConfig.num_samples
        # (the model's default K): one setting, stored in both places, always equal.
        model = dict(self.model) if isinstance(self.model, dict) else self.model
        if isinstance(model, dict) and _model_has_num_samples(model):
            k = self.train.num_samples
            if model.setdefault(NUM_SAMPLES, k) != k:
                raise ConfigError(f"model.num_samples={model[NUM_SAMPLES]!r} and train.num_samples={k!r} disagree: "
                                  "they are the same K (posterior samples per target); set one of them")
        object.__setattr__(self, "model", check_model_section(model))

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RunConfig":
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"a run config is a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
        for name in SECTIONS:
            if data.get(name) is not None and not isinstance(data[name], dict):
                raise ConfigError(f"section {name} must be a mapping, got {data[name]!r}")
        model, train = dict(data.get("model") or {}), dict(data.get("train") or {})
        if NUM_SAMPLES in model and NUM_SAMPLES not in train:  # K given as model.num_samples only
            train[NUM_SAMPLES] = model[NUM_SAMPLES]
        return cls(
            data=DataConfig.from_dict(data.get("data")),
            episode=EpisodeConfig.from_dict(data.get("episode")),
            model=model,
            optim=OptimConfig.from_dict(data.get("optim")),
            train=TrainConfig.from_dict(train),
            run=RunSection.from_dict(data.get("run")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_yaml(path))

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
            if key in ("train.num_samples", "model.num_samples"):  # one setting in two places: both follow
                raw["train"][NUM_SAMPLES] = value
                if NUM_SAMPLES in raw["model"]:
                    raw["model"][NUM_SAMPLES] = value
            try:
                config = type(self).from_dict(raw)
            except ConfigError as exc:
                raise ConfigError(f"--set {item}: {exc}") from None
        return config

    # --- derived objects ----------------------------------------------------------------------
    def train_spec(self) -> EpisodeSpec:
        return self._spec(self.episode.train, self.data.train_split)

    def eval_spec(self) -> EpisodeSpec:
        return self._spec(self.episode.eval, self.data.eval_split)

    def _spec(self, shape: EpisodeShape, split: str) -> EpisodeSpec:
        return EpisodeSpec(split=split, binarize=self.data.binarize, threshold=self.data.threshold, **dataclasses.asdict(shape))

    def resolve_paths(self, base: str | Path | None = None) -> "RunConfig":
        """A copy with ``data.dir`` and ``run.out`` absolute (relative to ``base``, default the working
        directory). Ray workers change directory: resolve in the driver before handing the config over."""
        base = Path(base) if base is not None else Path.cwd()

        def absolute(p: str) -> str:
            p = Path(p).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())

        return dataclasses.replace(
            self,
            data=dataclasses.replace(self.data, dir=absolute(self.data.dir)),
            run=dataclasses.replace(self.run, out=absolute(self.run.out)),
        )

    # --- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(),
            "episode": self.episode.to_dict(),
            "model": _plain(self.model),
            "optim": self.optim.to_dict(),
            "train": self.train.to_dict(),
            "run": self.run.to_dict(),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/config.yaml`` atomically (every default filled in); returns the path."""
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


def load_yaml_file(path: str | Path, what: str = "config file", error: type[ConfigError] = ConfigError) -> Any:
    """The YAML document at ``path``; a missing file or bad YAML is ``error`` naming ``what``, the
    path and, for bad YAML, the line and column."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise error(f"{what} {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


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
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: keep the text, the field's type check decides
    return key, value


def set_path(raw: dict[str, Any], key: str, value: Any, item: str) -> None:
    """Set ``raw[a][b]... = value`` for key "a.b..."; unknown sections and keys of typed sections raise."""
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {item}: the key must be section.key (sections: {', '.join(SECTIONS)})")
    section = parts[0]
    if section not in SECTIONS:
        raise ConfigError(f"--set {item}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    node = raw[section]
    for depth, part in enumerate(parts[1:-1], start=1):
        if section == "model" and part not in node:
            node[part] = {}
        if part not in node or not isinstance(node[part], dict):
            known = ", ".join(k for k, v in node.items() if isinstance(v, dict)) or "none"
            raise ConfigError(f"--set {item}: {'.'.join(parts[:depth])} has no section {part!r} (known: {known})")
        node = node[part]
    last = parts[-1]
    reserved = section == "episode" and last in ("split", "binarize", "threshold")  # from_dict names their owner
    if section != "model" and last not in node and not reserved:
        where = ".".join(parts[:-1])
        raise ConfigError(f"--set {item}: unknown key {last!r} in {where} (known: {', '.join(node)})")
    node[last] = value


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    _atomic_write_text(path, text)
