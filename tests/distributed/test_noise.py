"""train.noise: per-episode noise follows the episode (what makes W workers × G = 1 process × W·G);
per-rank noise still trains and resumes exactly."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from varmem.distributed.config import RunConfig
from varmem.distributed.rundir import METRICS_FILE, list_checkpoints, load_checkpoint
from varmem.distributed.train_loop import TrainContext, train, training_objective
from varmem.episodes.sampler import EpisodeSampler
from tests.distributed.helpers import tiny_raw
from tests.distributed.standin import LinearMemoryVAE

QUIET = TrainContext(quiet=True)


def test_episode_noise_does_not_depend_on_the_companions(tiny_data):
    cfg = RunConfig.from_dict(tiny_raw(tiny_data, Path("unused")))
    sampler = EpisodeSampler(tiny_data, cfg.train_spec(), seed=0)
    torch.manual_seed(0)
    model = LinearMemoryVAE((26, 26), global_noise=True)
    both = training_objective(model, sampler.batch([4, 9]), [4, 9], 3, noise="episode", seed=0)
    alone = [training_objective(model, sampler.batch([i]), [i], 3, noise="episode", seed=0) for i in (4, 9)]
    assert torch.equal(both.bound, torch.cat([a.bound for a in alone]))
    assert torch.allclose(both.loss, (alone[0].loss + alone[1].loss) / 2)
    # the noise is the episode's own: another seed, other samples
    other = training_objective(model, sampler.batch([4]), [4], 3, noise="episode", seed=1)
    assert not torch.equal(other.bound, alone[0].bound)


def test_rank_noise_trains_and_resumes_exactly(tiny_data, tmp_path):
    def cfg(run: Path, steps: int) -> RunConfig:
        raw = tiny_raw(tiny_data, run, train={"steps": steps, "checkpoint_every": 3, "noise": "rank"})
        raw["model"]["global_noise"] = True
        return RunConfig.from_dict(raw)

    train(cfg(tmp_path / "a", 6), context=QUIET)
    train(cfg(tmp_path / "b", 3), context=QUIET)
    torch.manual_seed(99)
    train(cfg(tmp_path / "b", 6), resume=True, context=QUIET)

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (run / METRICS_FILE).read_text().splitlines()) if r["kind"] == "train"]

    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) == 6
    pa = load_checkpoint(list_checkpoints(tmp_path / "a")[-1][1])["model"]
    pb = load_checkpoint(list_checkpoints(tmp_path / "b")[-1][1])["model"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
