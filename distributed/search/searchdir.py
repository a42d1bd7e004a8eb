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
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from varmem.distributed.config import ConfigError, RunConfig, atomic_write_text, read_yaml
from varmem.distributed.search.space import Space, parse_space

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
    for name in (SEARCH_FILE, RESULTS_CSV, RESULTS_JSON, BEST_CONFIG, SIGNATURE_FILE):
        (search_dir / name).unlink(missing_ok=True)
