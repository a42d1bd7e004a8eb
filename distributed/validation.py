"""The fixed validation and evaluation episodes of a run config."""
from __future__ import annotations

import dataclasses
from typing import Iterator

from varmem.distributed.config import RunConfig
from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeBatch, EpisodeSampler


def eval_batches(dataset: Dataset, config: RunConfig, episodes: int, seed: int, split: str | None = None) -> Iterator[EpisodeBatch]:
    """Episodes 0..episodes−1 of the eval spec with ``seed`` (on ``split``, default the config's
    ``data.eval_split``), in batches of ``train.eval_batch``, one at a time."""
    spec = config.eval_spec() if split is None else dataclasses.replace(config.eval_spec(), split=split)
    sampler = EpisodeSampler(dataset, spec, seed=seed)
    step = config.train.eval_batch
    for i in range(0, episodes, step):
        yield sampler.batch(range(i, min(i + step, episodes)))


def validation_batches(dataset: Dataset, config: RunConfig, episodes: int, seed: int) -> list[EpisodeBatch]:
    """The fixed validation episodes, sampled once and kept for every validation of a run."""
    return list(eval_batches(dataset, config, episodes, seed))


