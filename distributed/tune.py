"""``varmem tune``: a Ray Tune search over run-config fields, each trial a training run.

    varmem tune --config FILE --space SPACE.yaml [--samples N] [--scheduler fifo|asha] [--out SEARCH_DIR]
                [--set section.key=value ...] [--steps N] [--workers N] [--cpus-per-trial C]
                [--max-concurrent N] [--grace-period STEPS] [--reduction-factor F] [--seed S]
                [--address ADDR] [--overwrite] [--quiet]
    varmem tune --resume --out SEARCH_DIR     continue an interrupted search (its own config, space, options)
    python -m varmem.distributed.tune ...            the same flags

The space file
--------------
A YAML mapping from run-config paths (the keys of ``varmem train --set``: ``optim.lr``,
``model.z_dim``, ``train.num_samples``, ``episode.train.shots``) to one distribution each::

    optim.lr: {grid: [1.0e-4, 3.0e-4]}             every value in every sample (Tune's grid_search)
    model.z_dim: {choice: [32, 64]}                one value drawn per trial, uniformly
    optim.weight_decay: {loguniform: [1.0e-6, 1.0e-3]}   a float, log-uniform in [low, high)
    optim.grad_clip: {uniform: [1.0, 20.0]}         a float, uniform in [low, high)
    episode.train.shots: {randint: [1, 5]}         an integer in [low, high], both ends included
    train.val_every: {value: 100}                  one fixed value for every trial (or just ``train.val_every: 100``)

Write floats with a dot (``1.0e-4``): YAML 1.1 reads ``1e-4`` as a string (it is still accepted
where the field is a float). ``--samples N`` draws N trials per grid point: N × the product of the
grid sizes trials in all. Before any trial starts, every key must be a field of the config and
every value must fit it: each grid/choice value and both ends of each range are applied to the
base config with the config's own type and range checks, all grid/choice combinations together
when there are at most 64 of them, the dataset must supply the episodes and the model section must
build. Whatever fails raises :class:`SpaceError` (a ConfigError: ``varmem: error: ...``, status 2)
naming the space file, the key and the value. A search may not vary what makes trials'
validation NLLs comparable or what it owns itself: the ``data`` and ``run`` sections,
``episode.eval``, ``train.steps`` (ASHA's horizon: use ``--steps``), ``train.val_episodes``,
``train.val_samples`` and ``train.val_seed``.

Trials
------
Each trial is one training run in ``SEARCH_DIR/trials/<trial id>`` (a normal run directory:
``config.yaml``, ``checkpoints/``, ``metrics.jsonl``, ``final_metrics.json``, ``tensorboard/``).
``--workers 0`` (the default) runs :func:`varmem.distributed.train_loop.train` inside the Tune trial
(one CPU each, ``--cpus-per-trial``); ``--workers N`` makes the trial a thin driver (0.01 CPU)
that fits a Ray Train ``TorchTrainer`` of N workers through
:func:`varmem.distributed.ray_train.train_distributed`.

A trial reports to Tune whenever its run has a new validation NLL bound, and whenever it writes a
checkpoint after its first validation: the metric must be in every report, and the train loop's
reports carry the training values only, so :class:`TrialReporter` takes the newest validation from
the run's ``metrics.jsonl`` (rank 0 writes it before the next report). In-process the train loop's
``report`` callback calls ``tune.report`` (with the checkpoint: Tune keeps a copy); for
``--workers N`` the TorchTrainer's controller runs a ``TuneReportCallback`` that forwards the same
reports (with the path of Ray's copy of the checkpoint). Every report carries ``step`` (training
steps: ASHA's time attribute), ``val_nll_bound`` (the newest validation NLL bound in nats: the
search's metric, mode min), ``val_step``, the other validation values as ``val_*`` and the last
training window's values as ``train_*``. A validation at a step that is not a checkpoint step
reaches Tune with the next log line's report (the train loop reports a log line before it validates).

``--scheduler asha`` stops trials early: ``ASHAScheduler(time_attr="step", max_t=train.steps,
grace_period=--grace-period (default train.val_every), reduction_factor=--reduction-factor,
stop_last_trials=False)``. A trial is judged at a rung (grace period × F^k steps) on the newest
validation NLL of its first report past the rung, so validate at least as often as the grace period.

The search directory
--------------------
::

    SEARCH_DIR/search.yaml        what was asked: the base config, the space, the options (for --resume)
    SEARCH_DIR/tune/              Ray Tune's experiment (what Tuner.restore reads)
    SEARCH_DIR/trials/<trial>/    each trial's run directory
    SEARCH_DIR/results.csv        one row per trial: the sampled values, final and best validation NLL, steps, status
    SEARCH_DIR/results.json       the same rows, the metric, the best trial
    SEARCH_DIR/best_config.yaml   the base config with the best trial's values: `varmem train --config` takes it

The best trial has the lowest final validation NLL bound (its last validation). ``--resume``
(Ctrl-C stops a search and saves its state) restores the experiment with
``Tuner.restore(SEARCH_DIR/tune, trainable=...)``: finished trials stay as they are, unfinished
ones continue from the newer of Tune's copy of their checkpoint and their run directory's
newest checkpoint, exactly as ``varmem train --resume`` continues a run; the trials not generated
yet are (Tune saves the search generator's state). Tune 2.60 does not save the scheduler's state:
after a resume, ASHA's rungs fill again from the resumed and new trials' reports only.

Nothing here imports torch or Ray until a command runs.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from varmem.distributed.config import ConfigError, RunConfig, atomic_write_text, load_yaml_file, read_yaml
from varmem.distributed.metrics import row_tags

METRIC = "val_nll_bound"  # the newest validation NLL bound (nats): the search's metric
MODE = "min"
TIME_ATTR = "step"  # training steps: ASHA's time attribute

SEARCH_FILE = "search.yaml"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
BEST_CONFIG = "best_config.yaml"
BEST_RUN = "best"  # best_config.yaml's run.out, inside the search directory

DRIVER_CPUS = 0.01  # a --workers N trial only drives its TorchTrainer (Tune refuses {"cpu": 0})
KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "value")
SCHEDULERS = ("fifo", "asha")
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


# --- the space --------------------------------------------------------------------------------


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
    """The space file at ``path``, parsed (not yet checked against a config)."""
    return parse_space(load_yaml_file(path, "space file", SpaceError), str(path))


def parse_space(raw: Any, where: str = "space") -> Space:
    """``{path: {kind: args}}`` → ``{path: Param}``; a value that is not a one-key mapping of a kind is fixed."""
    example = "e.g. optim.lr: {grid: [1.0e-4, 3.0e-4]}"
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


def _plain_value(value: Any) -> Any:
    """Tune's samples as plain Python (numpy scalars → int/float) for the config and the YAML files."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, tuple, dict)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def apply_params(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """``base`` with each ``path: value`` applied through the config's ``--set`` checks (ConfigError names it)."""
    return base.with_overrides([f"{key}={json.dumps(_plain_value(value))}" for key, value in params.items()])


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
        items = [f"{key}={json.dumps(_plain_value(v))}" for key, v in params.items()]
        message = str(exc)
        for item in items:
            message = message.removeprefix(f"--set {item}: ")
        shown = ", ".join(f"{key}: {v!r}" for key, v in params.items())
        raise SpaceError(f"{where}: {shown} does not fit the config: {message}") from None


def preflight(variants: list[Variant], where: str = "space") -> None:
    """The checks that need the dataset and the model, on every distinct config of :func:`check_space`:
    the dataset supplies the episodes, the model section builds (a bad value fails here, not in a trial)."""
    from varmem.distributed.train_loop import build_model, open_dataset
    from varmem.episodes.errors import DataError

    seen_data: set[str] = set()
    seen_model: set[str] = set()
    image_shape = None
    for params, config in variants:
        data_key = json.dumps([config.data.to_dict(), config.episode.to_dict()], sort_keys=True)
        model_key = json.dumps(config.model.to_dict(), sort_keys=True)
        shown = ", ".join(f"{key}: {value!r}" for key, value in params.items()) or "the base config"
        try:
            if data_key not in seen_data or image_shape is None:
                image_shape = tuple(open_dataset(config).image_shape)
                seen_data.add(data_key)
            if model_key not in seen_model:
                build_model(config, image_shape)
                seen_model.add(model_key)
        except (ConfigError, DataError) as exc:
            raise SpaceError(f"{where}: {shown}: {exc}") from None
        except (TypeError, ValueError) as exc:  # a model factory's own complaint about its keywords
            raise SpaceError(f"{where}: {shown}: the model section does not build: {exc}") from None


# --- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchOptions:
    """The command line's choices about the search (saved in search.yaml for --resume)."""

    samples: int = 1  # trials per grid point
    scheduler: str = "fifo"  # fifo: every trial runs to train.steps | asha: early stopping on the validation NLL
    workers: int = 0  # 0: each trial trains in-process; N: each trial is a TorchTrainer of N workers
    cpus_per_trial: float = 1.0  # CPUs of an in-process trial, or of each worker of a --workers N trial
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster's CPUs hold
    grace_period: int = 0  # ASHA: steps before a trial may be stopped; 0: train.val_every (train.steps if 0)
    reduction_factor: float = 2.0  # ASHA: keep the best 1/F at each rung
    seed: int = 0  # the sampler's seed (choice, uniform, loguniform, randint)

    def check(self, config: RunConfig) -> None:
        if self.samples < 1:
            raise ConfigError(f"--samples must be ≥ 1, got {self.samples}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be ≥ 0 (0 = each trial in-process), got {self.workers}")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.max_concurrent < 0:
            raise ConfigError(f"--max-concurrent must be ≥ 0 (0 = as many as the cluster holds), got {self.max_concurrent}")
        if self.grace_period < 0 or self.grace_period > config.train.steps:
            raise ConfigError(f"--grace-period must be in [0, train.steps={config.train.steps}] (0 = train.val_every), "
                              f"got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"--reduction-factor must be > 1, got {self.reduction_factor}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be ≥ 0, got {self.seed}")

    def grace(self, config: RunConfig) -> int:
        if self.grace_period:
            return self.grace_period
        return min(config.train.val_every or config.train.steps, config.train.steps)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --- a trial ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (handed over by ``tune.with_parameters``)."""

    config: dict[str, Any]  # the base run config, paths absolute
    search_dir: str  # absolute
    workers: int = 0
    cpus_per_worker: float = 1.0
    plugins: tuple[str, ...] = ()  # model-family plugins the driver loaded (--plugin): loaded again in each trial


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a half-written last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def tune_metrics(train_row: dict[str, Any], val_row: dict[str, Any], step: int) -> dict[str, Any]:
    """The values of one Tune report (see the module docstring)."""
    out: dict[str, Any] = {TIME_ATTR: step, METRIC: float(val_row["nll_bound"]), "val_step": int(val_row["step"])}
    for key in row_tags(val_row, ("nll_bound",)):  # every value of the family's, by name
        out[f"val_{key}"] = float(val_row[key])
    for key in (*row_tags(train_row, ("lr", "data_wait")), "elapsed_s"):
        if isinstance(train_row.get(key), (int, float)):
            out[f"train_{key}"] = float(train_row[key])
    return out


class TrialReporter:
    """Turns a run directory's progress into Tune reports: one per new validation, and one per new
    checkpoint once the run has validated (Tune refuses a report without the metric)."""

    def __init__(self, run_dir: Path, report: Callable[[dict[str, Any], Path | None], None] | None = None):
        self.run_dir = Path(run_dir)
        self._report = report
        self.val_step: int | None = None  # the last validation reported
        self.ckpt_step: int | None = None  # the last checkpoint reported

    def next_report(self, checkpoint: Path | None = None) -> tuple[dict[str, Any], Path | None] | None:
        """The next report's (metrics, checkpoint or None) when there is something new (and it counts
        as reported), else None. ``checkpoint``: the run's newest checkpoint file, when one was just written."""
        from varmem.distributed.train_loop import METRICS_FILE, checkpoint_step

        rows = read_rows(self.run_dir / METRICS_FILE)
        vals = [r for r in rows if r.get("kind") == "val" and isinstance(r.get("nll_bound"), (int, float))]
        if not vals:
            return None
        val = vals[-1]
        trains = [r for r in rows if r.get("kind") == "train"]
        train_row = trains[-1] if trains else {}
        ckpt_step = checkpoint_step(checkpoint) if checkpoint is not None else None
        new_val = self.val_step is None or val["step"] > self.val_step
        new_ckpt = ckpt_step is not None and (self.ckpt_step is None or ckpt_step > self.ckpt_step)
        if not (new_val or new_ckpt):
            return None
        self.val_step = int(val["step"])
        if new_ckpt:
            self.ckpt_step = ckpt_step
        step = max(int(train_row.get("step", 0)), int(val["step"]), ckpt_step or 0)
        return tune_metrics(train_row, val, step), checkpoint if new_ckpt else None

    def update(self, checkpoint: Path | None = None) -> bool:
        """Report when there is something new; True when it did."""
        found = self.next_report(checkpoint)
        if found is not None:
            self._report(*found)
        return found is not None


def report_to_tune(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """``tune.report``; a checkpoint file goes to Tune as a directory holding a hard link to it."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    checkpoint = Path(checkpoint)
    staging = checkpoint.parent.parent / f".tune-staging-{checkpoint.stem}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            os.link(checkpoint, staging / checkpoint.name)
        except FileNotFoundError:  # pruned meanwhile (a --workers N run keeps writing): report without it
            tune.report(metrics)
            return
        except OSError:
            shutil.copy2(checkpoint, staging / checkpoint.name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_checkpoint(run_dir: Path, tune_checkpoint: Any) -> bool:
    """Put the trial's checkpoint in place for a resume: Tune's copy is copied into the run directory
    when it is newer than the run directory's newest (a restored search, a restarted trial). True when
    the run directory then holds a checkpoint (the trial resumes), False for a fresh start."""
    from varmem.distributed.train_loop import CHECKPOINT_DIR, checkpoint_step, latest_checkpoint
    from varmem.distributed.worker import checkpoint_file
    from varmem.episodes.files import temporary_sibling

    if tune_checkpoint is not None:
        with tune_checkpoint.as_directory() as directory:
            theirs = checkpoint_file(directory)
            ours = latest_checkpoint(run_dir)
            if ours is None or checkpoint_step(theirs) > checkpoint_step(ours):
                target = run_dir / CHECKPOINT_DIR / theirs.name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = temporary_sibling(target)
                shutil.copy2(theirs, tmp)
                os.replace(tmp, target)
    return latest_checkpoint(run_dir) is not None


def varmem_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: the base config with ``params`` applied, trained in SEARCH_DIR/trials/<trial id>."""
    from ray import tune

    from varmem.distributed.train_loop import TrainContext, train
    from varmem.models.registry import load_plugins

    load_plugins(setup.plugins)
    run_dir = Path(setup.search_dir) / TRIALS_DIR / tune.get_context().get_trial_id()
    config = apply_params(RunConfig.from_dict(setup.config), params)
    config = config.with_overrides([f"run.out={json.dumps(str(run_dir))}"])
    resume = restore_checkpoint(run_dir, tune.get_checkpoint())
    if setup.workers == 0:
        reporter = TrialReporter(run_dir, report_to_tune)
        context = TrainContext(report=lambda metrics, checkpoint: reporter.update(checkpoint), report_logs=True,
                               quiet=True)
        train(config, resume=resume, overwrite=not resume, context=context)
        reporter.update()  # a run found complete reports its last validation
        return
    from varmem.distributed.ray_train import DEFAULT_MAX_FAILURES, Launch, train_distributed

    # a thin driver: the TorchTrainer's controller forwards its workers' reports to this trial
    launch = Launch(workers=setup.workers, cpus_per_worker=setup.cpus_per_worker, max_failures=DEFAULT_MAX_FAILURES)
    train_distributed(config, launch, resume=resume, overwrite=not resume, quiet=True,
                      callbacks=[validation_report_callback(run_dir)], report_logs=True)


def validation_report_callback(run_dir: Path):
    """Ray Tune's ``TuneReportCallback`` (a Ray Train controller callback that forwards rank 0's reports
    to the Tune trial) for a ``--workers N`` trial, with the validation values the workers' reports lack:
    the :class:`TrialReporter` of ``run_dir`` decides what is forwarded and adds them."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from varmem.distributed.train_loop import latest_checkpoint

    class ValidationReportCallback(TuneReportCallback):
        def __init__(self, run_dir: Path):
            super().__init__()  # in the Tune trial: the queue to it; the object then runs in Ray Train's controller
            self.reporter = TrialReporter(run_dir)

        def after_report(self, run_context, metrics, checkpoint):
            # rank 0 wrote RUN_DIR/checkpoints/ckpt-N.pt before the report that carries Ray's copy of it
            newest = latest_checkpoint(self.reporter.run_dir) if checkpoint is not None else None
            found = self.reporter.next_report(newest)
            if found is not None:
                values, with_checkpoint = found
                super().after_report(run_context, [values], checkpoint if with_checkpoint is not None else None)

    return ValidationReportCallback(run_dir)


def _trial_dirname(trial) -> str:
    """Tune's directory of a trial: its id (the run directory has the same name under trials/)."""
    return trial.trial_id


# --- the search -------------------------------------------------------------------------------


@dataclass
class SearchResult:
    search_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool  # some trials are unfinished: `varmem tune --resume --out SEARCH_DIR` continues them


def run_search(base: RunConfig | None, space: Space | None, options: SearchOptions | None, search_dir: str | Path, *,
               resume: bool = False, overwrite: bool = False, address: str | None = None, quiet: bool = False,
               space_file: str | Path | None = None, log: Callable[[str], None] | None = None) -> SearchResult:
    """Run (or with ``resume`` continue) a search; writes the results table and the best config.

    A fresh search needs ``base``, ``space`` and ``options``; ``resume`` takes them from
    ``SEARCH_DIR/search.yaml`` (pass None). Every problem a user can fix raises ConfigError before
    Ray is reached and before anything is written."""
    emit = log or (lambda line: print(line, flush=True))
    given_dir = Path(search_dir)
    search_dir = given_dir.expanduser().resolve()
    where = str(space_file) if space_file is not None else "space"

    # 1. what to run (nothing written yet)
    if resume:
        if base is not None or space is not None or options is not None:
            raise ConfigError("--resume continues the search in SEARCH_DIR with its own config, space and options "
                              f"({search_dir / SEARCH_FILE}): leave out --config, --space and the search options")
        base, space, options, cwd, where = load_search(search_dir)
        if not (search_dir / TUNE_DIR).is_dir():
            raise ConfigError(f"nothing to resume: {search_dir / TUNE_DIR} is missing (start the search without --resume)")
    else:
        if base is None or space is None:
            raise ConfigError("varmem tune needs --config FILE and --space SPACE.yaml (or --resume --out SEARCH_DIR)")
        options = options or SearchOptions()
        cwd = Path.cwd()
        if (search_dir / SEARCH_FILE).exists() or (search_dir / TUNE_DIR).exists():
            if not overwrite:
                raise ConfigError(f"{search_dir} already holds a search: pass --resume to continue it "
                                  "or --overwrite to start it again")
    options.check(base)
    resolved = base.resolve_paths(cwd)
    space, variants = check_space(space, resolved, where)
    preflight([({}, resolved)] + variants, where)
    if options.scheduler == "asha" and (not base.train.val_every or base.train.val_every >= base.train.steps):
        emit(f"warning: train.val_every={base.train.val_every} validates only at the end of train.steps={base.train.steps}: "
             "ASHA has nothing to stop trials on (set train.val_every)")

    # 2. the cluster (before writing: a missing cluster writes nothing)
    import ray

    started = _connect(ray, address, quiet)
    try:
        cluster_cpus = _check_cluster(ray, options)
        if not resume:
            if overwrite:
                clear_search_dir(search_dir)
            search_dir.mkdir(parents=True, exist_ok=True)
            save_search(search_dir, base, space, options, cwd, where)
        grid = _fit(resolved, space, options, search_dir, resume=resume, cluster_cpus=cluster_cpus, quiet=quiet)
        rows = collect_rows(grid, space, search_dir, resolved.train.steps)
    finally:
        if started:
            ray.shutdown()

    # 3. results
    best = write_results(search_dir, given_dir, base, space, options, rows)
    interrupted = any(r["status"] in ("unfinished", "not started") for r in rows)
    emit(format_table(rows, space, best))
    emit(f"results: {given_dir / RESULTS_CSV}, {given_dir / RESULTS_JSON}")
    if best is not None:
        emit(f"best: trial {best['trial']}, final validation NLL bound {best['val_nll_final']:.3f} nats → "
             f"{given_dir / BEST_CONFIG}  (varmem train --config {given_dir / BEST_CONFIG})")
    if interrupted:
        emit(f"the search was interrupted: continue it with `varmem tune --resume --out {given_dir}`")
    return SearchResult(search_dir=search_dir, rows=rows, best=best, interrupted=interrupted)


def _connect(ray, address: str | None, quiet: bool) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS, or start a cluster here) unless connected; True when this call connected."""
    if ray.is_initialized():
        return False
    from varmem.distributed.ray_train import RAY_ENV_DEFAULTS

    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=not quiet, configure_logging=True)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {exc} "
                          "(start one with `ray start --head`, or leave --address out to start one here)") from None
    return True


def _check_cluster(ray, options: SearchOptions) -> float:
    """The cluster's CPUs; ConfigError when one trial needs more than the cluster has (it would wait forever)."""
    from varmem.distributed.ray_train import Launch, check_resources

    if not options.workers:
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if options.cpus_per_trial > cpus:
            raise ConfigError(f"--cpus-per-trial {options.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")
        return cpus
    cluster = check_resources(ray, Launch(workers=options.workers, cpus_per_worker=options.cpus_per_trial))
    need = options.workers * options.cpus_per_trial + DRIVER_CPUS
    if need > cluster["CPU"]:
        fits = (cluster["CPU"] - DRIVER_CPUS) / options.workers
        raise ConfigError(
            f"a trial of {options.workers} worker(s) × {options.cpus_per_trial:g} CPU and its driver ({DRIVER_CPUS:g} CPU) "
            f"needs {need:g} CPUs but the Ray cluster at {cluster['address']} has {cluster['CPU']:g}: "
            f"pass --cpus-per-trial {math.floor(fits * 100) / 100:g} (CPUs per worker; Ray's CPUs are logical), "
            "fewer --workers, or a cluster with more logical CPUs (ray start --head --num-cpus N)")
    return cluster["CPU"]


def _fit(base: RunConfig, space: Space, options: SearchOptions, search_dir: Path, *, resume: bool,
         cluster_cpus: float, quiet: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from varmem.models.registry import loaded_plugins

    setup = TrialSetup(config=base.to_dict(), search_dir=str(search_dir), workers=options.workers, plugins=tuple(loaded_plugins()),
                       cpus_per_worker=options.cpus_per_trial)
    # in-process: the trial trains, so it holds its CPUs; --workers N: a thin driver, its workers hold the CPUs
    resources = {"cpu": options.cpus_per_trial} if options.workers == 0 else {"cpu": DRIVER_CPUS}
    trainable = tune.with_resources(tune.with_parameters(varmem_trial, setup=setup), resources)
    experiment = search_dir / TUNE_DIR
    # CheckpointConfig(num_to_keep=1) snapshots the experiment at every trial checkpoint (what --resume wants);
    # Tune warns about it each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError(f"nothing to resume: {experiment} holds no Tune experiment state")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True)
        return _quietly(tuner.fit, quiet)
    per_trial = options.cpus_per_trial * options.workers + DRIVER_CPUS if options.workers else options.cpus_per_trial
    concurrent = options.max_concurrent or max(1, int(cluster_cpus // per_trial))
    if options.scheduler == "asha":
        # stop_last_trials=False: a trial that reaches max_t ends by itself (its final metrics and checkpoint
        # written), instead of being stopped by its last report, which comes before the final files
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=base.train.steps, grace_period=options.grace(base),
                                  reduction_factor=options.reduction_factor, stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space={key: param.domain() for key, param in space.items()},
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=options.samples,
            # the generator limits concurrency itself (Tune ignores max_concurrent_trials with a SearchGenerator)
            search_alg=BasicVariantGenerator(random_state=options.seed, max_concurrent=concurrent),
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(search_dir), verbose=0 if quiet else 1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # a copy for restore; the run keeps its own
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    return _quietly(tuner.fit, quiet)


def _quietly(fit: Callable[[], Any], quiet: bool) -> Any:
    """``fit()``; with ``quiet`` without Tune's tables on stdout (Tune prints some at every verbosity)."""
    if not quiet:
        return fit()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return fit()


# --- the search directory ---------------------------------------------------------------------


def save_search(search_dir: Path, base: RunConfig, space: Space, options: SearchOptions, cwd: Path, where: str) -> None:
    text = yaml.safe_dump({
        "config": base.to_dict(),  # paths as given (relative to cwd)
        "cwd": str(cwd),
        "space_file": where,
        "space": {key: param.to_raw() for key, param in space.items()},
        "options": asdict(options),
    }, sort_keys=False, allow_unicode=True)
    atomic_write_text(search_dir / SEARCH_FILE, "# written by varmem tune; --resume reads it\n" + text)


def load_search(search_dir: Path) -> tuple[RunConfig, Space, SearchOptions, Path, str]:
    path = search_dir / SEARCH_FILE
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} is missing ({search_dir} holds no varmem search)")
    raw = read_yaml(path)
    try:
        base = RunConfig.from_dict(raw["config"])
        space = parse_space(raw["space"], f"{path} (space)")
        options = SearchOptions.from_dict(raw.get("options") or {})
        return base, space, options, Path(raw.get("cwd") or Path.cwd()), str(raw.get("space_file") or path)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a varmem search file: {exc}") from None


def clear_search_dir(search_dir: Path) -> None:
    """What --overwrite removes: the Tune experiment, the trials' run directories, the results."""
    for name in (TUNE_DIR, TRIALS_DIR, BEST_RUN):
        shutil.rmtree(search_dir / name, ignore_errors=True)
    for name in (SEARCH_FILE, RESULTS_CSV, RESULTS_JSON, BEST_CONFIG):
        (search_dir / name).unlink(missing_ok=True)


def collect_rows(grid, space: Space, search_dir: Path, steps: int) -> list[dict[str, Any]]:
    """One row per trial: the sampled values, from its run directory the final and best validation NLL
    and the steps trained, and its status (finished, stopped (ASHA), error, unfinished, not started)."""
    from varmem.distributed.train_loop import FINAL_FILE, METRICS_FILE

    rows = []
    for i in range(len(grid)):
        result = grid[i]
        trial = Path(result.path).name
        run_dir = search_dir / TRIALS_DIR / trial
        metrics = read_rows(run_dir / METRICS_FILE)
        vals = [float(r["nll_bound"]) for r in metrics if r.get("kind") == "val"]
        trained = max((int(r.get("step", 0)) for r in metrics if r.get("kind") == "train"), default=0)
        last = result.metrics or {}
        last_val = max((int(r.get("step", 0)) for r in metrics if r.get("kind") == "val"), default=0)
        finished = trained >= steps and ((run_dir / FINAL_FILE).is_file() or last_val >= steps)
        if result.error is not None:
            status = "error"
        elif finished:
            status = "finished"
        elif not last:
            status = "not started"
        elif not last.get("done", False):
            status = "unfinished"
        else:
            status = "stopped"
        rows.append({
            "trial": trial,
            "params": {key: _plain_value(result.config.get(key)) for key in space},
            "val_nll_final": vals[-1] if vals else None,
            "val_nll_best": min(vals) if vals else None,
            "steps": trained,
            "status": status,
            "reports": int(last.get("training_iteration", 0)),
            "run_dir": str(run_dir),
            "error": _first_line(result.error) if result.error is not None else None,
        })
    return sorted(rows, key=lambda r: r["trial"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the lowest final validation NLL bound (the first of equals)."""
    scored = [r for r in rows if r["val_nll_final"] is not None and math.isfinite(r["val_nll_final"])]
    return min(scored, key=lambda r: r["val_nll_final"]) if scored else None


def write_results(search_dir: Path, given_dir: Path, base: RunConfig, space: Space, options: SearchOptions,
                  rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """results.csv, results.json and (when a trial validated) best_config.yaml; returns the best row."""
    best = best_row(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", *space, "val_nll_final", "val_nll_best", "steps", "status", "best", "run_dir", "error"])
    for r in rows:
        values = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in (r["params"][k] for k in space)]
        writer.writerow([r["trial"], *values,
                         _num(r["val_nll_final"]), _num(r["val_nll_best"]), r["steps"], r["status"],
                         int(best is not None and r["trial"] == best["trial"]), r["run_dir"], r["error"] or ""])
    atomic_write_text(search_dir / RESULTS_CSV, buffer.getvalue())
    summary = {
        "metric": METRIC, "mode": MODE, "time_attr": TIME_ATTR, "selection": "lowest final validation NLL bound",
        "space": {key: param.to_raw() for key, param in space.items()}, "options": asdict(options),
        "best": best["trial"] if best else None, "rows": rows,
    }
    atomic_write_text(search_dir / RESULTS_JSON, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    if best is not None:
        config = apply_params(base, best["params"]).with_overrides([f"run.out={json.dumps(str(given_dir / BEST_RUN))}"])
        header = (f"# The best trial of the search in {given_dir}: trial {best['trial']}, final validation NLL bound "
                  f"{best['val_nll_final']:.4f} nats after {best['steps']} steps ({best['status']}).\n"
                  + "".join(f"#   {key}: {json.dumps(value)}\n" for key, value in best["params"].items())
                  + f"# Train it: varmem train --config {given_dir / BEST_CONFIG}\n")
        atomic_write_text(search_dir / BEST_CONFIG, header + config.to_yaml())
    else:
        (search_dir / BEST_CONFIG).unlink(missing_ok=True)
    return best


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def format_table(rows: list[dict[str, Any]], space: Space, best: dict[str, Any] | None) -> str:
    """The results as an aligned text table; the best trial marked with *."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    header = ["trial", *space, "val NLL final", "val NLL best", "steps", "status"]
    body = []
    for r in rows:
        mark = " *" if best is not None and r["trial"] == best["trial"] else ""
        final = f"{r['val_nll_final']:.3f}" if r["val_nll_final"] is not None else "-"
        low = f"{r['val_nll_best']:.3f}" if r["val_nll_best"] is not None else "-"
        error = r["error"] if not r["error"] or len(r["error"]) <= 60 else r["error"][:57] + "..."
        status = r["status"] + (f" ({error})" if error else "")
        body.append([r["trial"] + mark, *(cell(r["params"][k]) for k in space), final, low, str(r["steps"]), status])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in [header] + body]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


# --- the command line -------------------------------------------------------------------------

TUNE_DESCRIPTION = ("Search run-config fields with Ray Tune: each trial a training run (in-process, or a Ray Train "
                    "TorchTrainer with --workers N), optional ASHA early stopping on the validation NLL bound; "
                    "writes SEARCH_DIR/results.csv, results.json and best_config.yaml. See distributed/tune.py "
                    "for the space file format.")


def add_tune_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search with Ray Tune (ASHA early stopping; results table, best config)",
                       description=TUNE_DESCRIPTION)
    add_tune_arguments(p)
    p.set_defaults(func=_tune)


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    d = SearchOptions()
    p.add_argument("--config", type=Path, default=None, help="the base YAML run config")
    from varmem.distributed.cli import add_plugin_argument

    add_plugin_argument(p)
    p.add_argument("--space", type=Path, default=None, help="the search space YAML (see configs/space_vma.yaml)")
    p.add_argument("--samples", type=int, default=None, metavar="N", help=f"trials per grid point (default {d.samples})")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None,
                   help=f"asha: stop trials early on the validation NLL bound (default {d.scheduler})")
    p.add_argument("--out", type=Path, default=None, metavar="SEARCH_DIR",
                   help="the search directory (default runs/tune-<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a field of the base config (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N (ASHA's max_t)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="0: each trial trains in-process (default); N: each trial is a Ray Train TorchTrainer of N workers")
    p.add_argument("--cpus-per-trial", type=float, default=None, metavar="C",
                   help=f"CPUs of an in-process trial, or of each worker with --workers N (default {d.cpus_per_trial:g})")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="trials at once (default: as many as the cluster's CPUs hold)")
    p.add_argument("--grace-period", type=int, default=None, metavar="STEPS",
                   help="ASHA: steps before a trial may be stopped (default train.val_every)")
    p.add_argument("--reduction-factor", type=float, default=None, metavar="F",
                   help=f"ASHA: keep the best 1/F of the trials at each rung (default {d.reduction_factor:g})")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the sampled values (default {d.seed})")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: RAY_ADDRESS, else a cluster started here for the search)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out SEARCH_DIR")
    p.add_argument("--overwrite", action="store_true", help="start again in a search directory that holds a search")
    p.add_argument("--quiet", action="store_true", help="no progress output (the results table is still printed)")


_OPTION_FLAGS = {"samples": "--samples", "scheduler": "--scheduler", "workers": "--workers",
                 "cpus_per_trial": "--cpus-per-trial", "max_concurrent": "--max-concurrent",
                 "grace_period": "--grace-period", "reduction_factor": "--reduction-factor", "seed": "--seed"}


def _tune(args: argparse.Namespace) -> int:
    if args.resume:
        given = [flag for name, flag in _OPTION_FLAGS.items() if getattr(args, name) is not None]
        given += [flag for flag, value in (("--config", args.config), ("--space", args.space), ("--steps", args.steps),
                                           ("--set", args.overrides), ("--overwrite", args.overwrite)) if value]
        if args.out is None:
            raise ConfigError("--resume needs --out SEARCH_DIR (the directory of the interrupted search)")
        if given:
            raise ConfigError(f"--resume continues the search in {args.out} with its own config, space and options "
                              f"({args.out / SEARCH_FILE}): leave out {', '.join(given)}")
        result = run_search(None, None, None, args.out, resume=True, address=args.address, quiet=args.quiet)
        return _exit_status(result)
    if args.config is None or args.space is None:
        raise ConfigError("varmem tune needs --config FILE and --space SPACE.yaml (or --resume --out SEARCH_DIR)")
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    base = RunConfig.load(args.config, overrides)
    space = load_space(args.space)
    options = SearchOptions(**{name: getattr(args, name) for name in _OPTION_FLAGS if getattr(args, name) is not None})
    out = args.out if args.out is not None else Path("runs") / f"tune-{args.config.stem}"
    result = run_search(base, space, options, out, overwrite=args.overwrite, address=args.address, quiet=args.quiet,
                        space_file=args.space)
    return _exit_status(result)


def _exit_status(result: SearchResult) -> int:
    if result.interrupted:
        return 130
    if result.best is None:
        print("varmem: error: no trial finished a validation (see the errors in the table and in "
              f"{result.search_dir / RESULTS_JSON})", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m varmem.distributed.tune``: ``varmem tune`` as a module (the form for ``ray job submit``)."""
    from varmem.distributed.cli import run_command

    parser = argparse.ArgumentParser(prog="python -m varmem.distributed.tune", description=TUNE_DESCRIPTION)
    add_tune_arguments(parser)
    return run_command(_tune, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
