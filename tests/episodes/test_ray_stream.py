"""Each Ray Train worker samples its own disjoint, deterministic stream from the mapped shards."""
from __future__ import annotations

import json

import pytest
import torch

from varmem.episodes.build import build_dataset
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.spec import EpisodeSpec
from varmem.episodes.stream import EpisodeStream
from tests.episodes.tiny import TinySource

pytestmark = pytest.mark.ray


def _worker_loop(config):
    """Runs in each Ray Train worker: sample 3 steps, record what was sampled."""
    import json as _json
    import os

    import ray.train

    from varmem.episodes.spec import EpisodeSpec as Spec
    from varmem.episodes.stream import EpisodeStream as Stream

    spec = Spec.from_dict(config["spec"])
    with Stream.for_train_worker(config["dataset"], spec, seed=config["seed"], batch=2) as stream:
        out = []
        for _ in range(3):
            b = next(stream)
            out.append({"index": b.index.tolist(), "class_ids": b.class_ids.tolist(), "checksum": float(b.memory.sum())})
        state = stream.state_dict()
        shared = stream.sampler.split.shards[0].images.base is not None
    rank = ray.train.get_context().get_world_rank()
    with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
        _json.dump({"steps": out, "state": state, "zero_copy": shared, "pid": os.getpid()}, f)


def test_two_train_workers_sample_disjoint_streams_that_match_in_process(tmp_path, ray_session):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    data = tmp_path / "tiny"
    build_dataset(TinySource(alphabets=3, per_alphabet=6), data, preprocessing=Preprocessing.default(26), progress=False, workers=1)
    spec = EpisodeSpec(split="background", ways=3, shots=2, targets=2)
    out = tmp_path / "out"
    out.mkdir()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"dataset": str(data), "spec": spec.to_dict(), "seed": 11, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="ray-stream", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert got[0]["pid"] != got[1]["pid"]  # two processes, each with its own mapped shards
    assert all(g["zero_copy"] for g in got)
    assert [g["state"]["world_size"] for g in got] == [2, 2] and [g["state"]["rank"] for g in got] == [0, 1]
    single = EpisodeStream(data, spec, seed=11, batch=4, prefetch=0)
    for step in range(3):
        a, b = got[0]["steps"][step], got[1]["steps"][step]
        assert set(a["index"]).isdisjoint(b["index"])
        ref = next(single)
        assert a["index"] + b["index"] == ref.index.tolist()
        assert a["class_ids"] + b["class_ids"] == ref.class_ids.tolist()
        assert a["checksum"] == pytest.approx(float(ref.memory[:2].sum())) and b["checksum"] == pytest.approx(float(ref.memory[2:].sum()))
