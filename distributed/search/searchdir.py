"""The search directory and what a search was asked: its files, the command line's options
(:class:`SearchOptions`), and ``search.yaml`` (the base config, the space and the options), which
``varmem tune --resume`` reads.

    SEARCH_DIR/search.yaml        what was asked (for --resume)
    SEARCH_DIR/tune/              Ray Tune's experiment (what Tuner.restore reads)
    SEARCH_DIR/trials/<trial>/    each trial's run directory
    SEARCH_DIR/results.csv        one row per trial (distributed/search/results.py)
    SEARCH_DIR/results.json       the same rows, the metric, the best trial
    SEARCH_DIR/best_config.yaml   the base config with the best trial's values
    SEARCH_DIR/signature.json     varmem's signature of search.yaml and the pickled state in tune/ (distributed/search/trust.py)

SEARCH_DIR is a local folder or a URI on object storage (``s3://bucket/searches/NAME``, any ``pyarrow.fs``
URI: :func:`search_location`): the files above are then objects there, Ray Tune keeps its experiment there
(``tune.RunConfig(storage_path, storage_filesystem)``) and each trial's run directory is a run on the URI
(distributed/remote_run.py). Everything here reads and writes through a
:class:`~varmem.episodes.storage.Location`, the same code for both.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.search.metric import SearchMetric
from varmem.distributed.search.space import Space, parse_space
from varmem.episodes.storage import Location, is_uri, location

SEARCH_FILE = "search.yaml"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
BEST_CONFIG = "best_config.yaml"
BEST_RUN = "best"  # best_config.yaml's run.out, inside the search directory
SIGNATURE_FILE = "signature.json"  # varmem's signature of the pickled state (distributed/search/trust.py)

SCHEDULERS = ("fifo", "asha")


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


def search_location(search_dir: "str | os.PathLike | Location") -> Location:
    """The search directory: a local path made absolute (links resolved), or a URI as given."""
    if isinstance(search_dir, Location) or is_uri(search_dir):
        return location(search_dir)
    return location(Path(search_dir).expanduser().resolve())


def save_search(place: "Location | str | Path", base: RunConfig, space: Space, options: SearchOptions, cwd: Path,
                where: str, metric: SearchMetric | None = None) -> None:
    place = search_location(place)
    text = yaml.safe_dump({
        "config": base.to_dict(),  # paths as given (relative to cwd)
        "cwd": str(cwd),
        "space_file": where,
        "space": {key: param.to_raw() for key, param in space.items()},
        "metric": metric.to_raw() if metric is not None else None,  # None: the families' default (metric.py)
        "options": asdict(options),
    }, sort_keys=False, allow_unicode=True)
    place.child(SEARCH_FILE).write_text("# written by varmem tune; --resume reads it\n" + text)


def load_search(place: "Location | str | Path") -> tuple[RunConfig, Space, SearchOptions, Path, str, SearchMetric | None]:
    place = search_location(place)
    where = place.child(SEARCH_FILE)
    if not where.is_file():
        raise ConfigError(f"nothing to resume: {where} is missing ({place} holds no varmem search)")
    try:
        raw = yaml.safe_load(where.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not readable YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a varmem search file: expected a mapping, got {type(raw).__name__}")
    try:
        base = RunConfig.from_dict(raw["config"])
        space = parse_space(raw["space"], f"{where} (space)")
        metric = SearchMetric.from_raw(raw["metric"], f"{where} (metric)") if raw.get("metric") is not None else None
        options = SearchOptions.from_dict(raw.get("options") or {})
        return base, space, options, Path(raw.get("cwd") or Path.cwd()), str(raw.get("space_file") or where), metric
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{where} is not a varmem search file: {exc}") from None


def clear_search_dir(place: "Location | str | Path") -> None:
    """What --overwrite removes: the Tune experiment, the trials' run directories, the results."""
    place = search_location(place)
    for name in (TUNE_DIR, TRIALS_DIR, BEST_RUN):
        place.child(name).delete_tree()
    for name in (SEARCH_FILE, RESULTS_CSV, RESULTS_JSON, BEST_CONFIG, SIGNATURE_FILE):
        place.child(name).delete()
