"""The search space: a YAML file mapping run-config paths to distributions, parsed and checked
against the base config before any trial (the format is in distributed/search/__init__.py).

    optim.lr: {grid: [1.0e-4, 3.0e-4]}      model.z_dim: {choice: [32, 64]}      train.val_every: 100

:func:`load_space` / :func:`parse_space` read it (:class:`Param` per key), :func:`check_space` applies
every value to the base config with the config's own checks, :func:`preflight` builds the dataset and
the model of each distinct config. Every problem is a :class:`SpaceError` naming the file, key and value.
Nothing here imports torch or Ray until a function needs them.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varmem.distributed.config import ConfigError, RunConfig, load_yaml_file
from varmem.distributed.search.metric import METRIC_KEY, SearchMetric, TrialModel

KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "value")
MAX_JOINT_CHECKS = 64  # all grid/choice combinations are checked together up to this many

# What a search must not vary, and why.
FIXED = {
    "data": "the validation episodes come from it: trials' validation NLLs would not be comparable",
    "episode.eval": "the validation episodes have this shape: trials' validation NLLs would not be comparable",
    "train.val_episodes": "trials' validation NLLs would not be comparable",
    "train.val_samples": "trials' validation NLLs would not be comparable",
    "train.val_seed": "trials' validation NLLs would not be comparable",
    "train.steps": "it is ASHA's horizon (max_t), the same for every trial: set it with --steps",
    "run": "the search gives each trial its own run directory, SEARCH_DIR/trials/<trial>",
}


class SpaceError(ConfigError):
    """A search space file (or a value in it) that does not fit the run config."""


@dataclass(frozen=True)
class Param:
    """One key of the space: a run-config path and its distribution."""

    key: str  # "optim.lr"
    kind: str  # one of KINDS
    args: tuple  # grid/choice: the values; uniform/loguniform/randint: (low, high); value: (value,)

    def domain(self) -> Any:
        """The Tune search-space object (a plain value for ``value``)."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)  # Tune's upper bound is exclusive; ours is not
        return self.args[0]

    def probes(self) -> list[Any]:
        """The values checked against the config before any trial: every listed value, both ends of a range."""
        return list(self.args)

    @property
    def discrete(self) -> bool:
        return self.kind in ("grid", "choice", "value")

    def to_raw(self) -> dict[str, Any]:
        return {self.kind: list(self.args) if self.kind != "value" else self.args[0]}


Space = dict  # str -> Param, in the file's order


def load_space(path: str | Path) -> Space:
    """The space file at ``path``, parsed (not yet checked against a config); its ``metric:`` is read by
    :func:`load_space_file`."""
    return load_space_file(path)[0]


def load_space_file(path: str | Path) -> tuple[Space, SearchMetric | None]:
    """The space file at ``path``: its space and the metric it names (None: the families' default,
    distributed/search/metric.py)."""
    raw = load_yaml_file(path, "space file", SpaceError)
    space = parse_space(raw, str(path))
    metric = raw.get(METRIC_KEY) if isinstance(raw, dict) else None
    return space, (SearchMetric.from_raw(metric, str(path)) if metric is not None else None)


def parse_space(raw: Any, where: str = "space") -> Space:
    """``{path: {kind: args}}`` → ``{path: Param}``; a value that is not a one-key mapping of a kind is fixed.
    The ``metric:`` key is not a parameter (:func:`load_space_file` reads it)."""
    example = "e.g. optim.lr: {grid: [1.0e-4, 3.0e-4]}"
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k != METRIC_KEY}
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: a search space is a mapping of config paths to distributions ({example}), "
                         f"got {raw!r}")
    space: Space = {}
    for key, spec in raw.items():
        if not isinstance(key, str) or len(key.split(".")) < 2 or not all(key.split(".")):
            raise SpaceError(f"{where}: {key!r} is not a config path section.key ({example})")
        if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS:
            kind, args = next(iter(spec.items()))
        elif isinstance(spec, dict) and any(k in KINDS for k in spec):
            raise SpaceError(f"{where}: {key}: give exactly one of {', '.join(KINDS)}, got {', '.join(map(str, spec))}")
        elif isinstance(spec, dict) and key.split(".")[0] != "model":
            raise SpaceError(f"{where}: {key}: unknown distribution {', '.join(map(repr, spec))} "
                             f"(known: {', '.join(KINDS)}; {example})")
        else:  # a fixed value (a mapping only in the free-form model section)
            kind, args = "value", spec
        space[key] = Param(key, kind, _parse_args(kind, args, f"{where}: {key}"))
    return space


def _parse_args(kind: str, args: Any, where: str) -> tuple:
    if kind == "value":
        return (args,)
    if kind in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {kind} takes a non-empty list of values, got {args!r}")
        return tuple(args)
    if not isinstance(args, list) or len(args) != 2:
        raise SpaceError(f"{where}: {kind} takes [low, high], got {args!r}")
    if kind == "randint":
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise SpaceError(f"{where}: randint takes two integers [low, high], got {args!r}")
        low, high = args
        if low > high:
            raise SpaceError(f"{where}: randint needs low ≤ high, got {args!r}")
        return (low, high)
    try:
        low, high = (float(a) for a in args)  # YAML 1.1 reads 1e-4 as a string
    except (TypeError, ValueError):
        raise SpaceError(f"{where}: {kind} takes two numbers [low, high], got {args!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise SpaceError(f"{where}: {kind} needs finite low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs 0 < low, got {args!r}")
    return (low, high)


def plain_value(value: Any) -> Any:
    """Tune's samples as plain Python (numpy scalars → int/float) for the config and the YAML files."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, tuple, dict)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value


def apply_params(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """``base`` with each ``path: value`` applied through the config's ``--set`` checks (ConfigError names it)."""
    return base.with_overrides([f"{key}={json.dumps(plain_value(value))}" for key, value in params.items()])


def _get_path(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return node


Variant = tuple[dict[str, Any], RunConfig]  # (the space values applied, the config they give)


def check_space(space: Space, base: RunConfig, where: str = "space") -> tuple[Space, list[Variant]]:
    """Every key a field of ``base``, every probe value fitting it (see the module docstring).

    Returns the space with each value as the config holds it (``"1e-4"`` → ``0.0001``) and the
    (values, config) pairs checked, for the checks that need the dataset and the model (:func:`preflight`)."""
    checked: Space = {}
    variants: list[Variant] = []
    for key, param in space.items():
        for prefix, why in FIXED.items():
            if key == prefix or key.startswith(prefix + "."):
                raise SpaceError(f"{where}: {key} cannot be searched: {why}")
        ranged = param.kind in ("uniform", "loguniform")
        values = []
        for value in param.probes():
            try:
                config = _apply_one(base, {key: value}, where)
            except SpaceError as exc:
                hint = f" ({param.kind} draws floats: use randint or choice for an integer field)" if ranged else ""
                raise SpaceError(f"{exc}{hint}") from None
            values.append(_get_path(config.to_dict(), key))
            variants.append(({key: values[-1]}, config))
        if ranged and not all(isinstance(v, float) for v in values):
            raise SpaceError(f"{where}: {key}: {param.kind} draws floats but the config holds {values!r} "
                             "(use randint or choice for an integer field)")
        checked[key] = Param(key, param.kind, tuple(values))
    discrete = [p for p in checked.values() if p.discrete and len(p.args) > 1]
    combos = math.prod(len(p.args) for p in discrete)
    if len(discrete) > 1 and combos <= MAX_JOINT_CHECKS:
        others = {p.key: p.args[0] for p in checked.values() if p not in discrete}  # fixed values, ranges' low ends
        for values in itertools.product(*(p.args for p in discrete)):
            params = {**others, **{p.key: v for p, v in zip(discrete, values)}}
            variants.append((params, _apply_one(base, params, where)))
    return checked, variants


def _apply_one(base: RunConfig, params: dict[str, Any], where: str) -> RunConfig:
    try:
        return apply_params(base, params)
    except ConfigError as exc:
        items = [f"{key}={json.dumps(plain_value(v))}" for key, v in params.items()]
        message = str(exc)
        for item in items:
            message = message.removeprefix(f"--set {item}: ")
        shown = ", ".join(f"{key}: {v!r}" for key, v in params.items())
        raise SpaceError(f"{where}: {shown} does not fit the config: {message}") from None


def preflight(variants: list[Variant], where: str = "space") -> list[TrialModel]:
    """The checks that need the dataset and the model, on every distinct config of :func:`check_space`:
    the dataset supplies the episodes, the model section builds (a bad value fails here, not in a trial).
    Returns what the search's metric is chosen from: each distinct model's family and capabilities
    (distributed/search/metric.py)."""
    from varmem.distributed.run import build_model, open_dataset
    from varmem.episodes.errors import DataError
    from varmem.models.base import Capability

    seen_data: set[str] = set()
    seen_model: set[str] = set()
    image_shape = dataset = None
    models: list[TrialModel] = []
    for params, config in variants:
        data_key = json.dumps([config.data.to_dict(), config.episode.to_dict()], sort_keys=True)
        model_key = json.dumps(config.model.to_dict(), sort_keys=True)
        shown = ", ".join(f"{key}: {value!r}" for key, value in params.items()) or "the base config"
        try:
            if data_key not in seen_data or image_shape is None:
                dataset = open_dataset(config)
                image_shape = tuple(dataset.image_shape)
                seen_data.add(data_key)
            if model_key not in seen_model:
                model = build_model(config, image_shape)
                seen_model.add(model_key)
                models.append(TrialModel(
                    shown=shown, family=config.model.family, likelihood=model.supports(Capability.LIKELIHOOD),
                    classifies=model.supports(Capability.CLASSIFICATION),
                    all_values=_validation_values(model, config, dataset)))
        except (ConfigError, DataError) as exc:
            raise SpaceError(f"{where}: {shown}: {exc}") from None
        except (TypeError, ValueError) as exc:  # a model factory's own complaint about its keywords
            raise SpaceError(f"{where}: {shown}: the model section does not build: {exc}") from None
    return models


def _validation_values(model, config: RunConfig, dataset):
    """A function giving the values a validation row of ``model`` holds (what
    :func:`varmem.models.eval.bound.evaluate_bound` returns, less bookkeeping): the objective of one
    validation episode is computed for its bound and terms, only when asked."""
    def values() -> tuple[str, ...]:
        import torch

        from varmem.distributed.validation import eval_batches
        from varmem.models.base import Batch, Capability
        from varmem.models.eval.bound import RESERVED_KEYS

        batch = Batch.of(next(iter(eval_batches(dataset, config, 1, config.train.val_seed))))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                obj = model.objective(batch, config.train.num_samples)
        finally:
            model.train(was_training)
        out = [*(("nll_bound", "nll_bound_stderr") if model.supports(Capability.LIKELIHOOD) else ()),
               *(("objective_nll_bound",) if obj.bound is not None else ()),
               *(f"objective_{name}" if name in RESERVED_KEYS else name for name in obj.terms),
               *(("accuracy", "accuracy_stderr") if model.supports(Capability.CLASSIFICATION) else ())]
        if "kl_address" in out:
            out.append("memory_use")  # the train loop's share of the memory's capacity (train_loop.memory_use)
        return tuple(out)
    return values
