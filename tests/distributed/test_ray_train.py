"""Ray Train DDP end to end on the session's local cluster, with the trainer tests' stand-in model.

Three fits of 2 workers (≈ 70 s together on 2 shared cores: the reference ≈ 25–30 s, the
fault fit and the resume fit ≈ 40 s):

* the reference: 6 steps, a checkpoint after every step; its parameters after every step are
  compared with the in-process trainer taking the union of both workers' episodes per step;
* a fit of 4 steps in which rank 1 SIGKILLs itself in step 3: Ray restarts the worker group from
  the step-2 checkpoint and the run finishes; then ``--resume`` to step 6 in a second fit. Its
  losses and parameters are the reference's, bit for bit, step by step.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from varmem.models.registry import load_plugins

from varmem.distributed.config import RunConfig
from varmem.distributed.ray_train import RAY_DIR, Launch, train_distributed
from varmem.distributed.rundir import FINAL_FILE, METRICS_FILE, list_checkpoints, load_checkpoint
from varmem.distributed.train_loop import TrainContext, train
from tests.distributed import faulty
from tests.distributed.helpers import tiny_raw

pytestmark = pytest.mark.ray

STEPS = 6
QUIET = TrainContext(quiet=True)


def config(tiny_data: Path, run_dir: Path, model: dict | None = None, **train_fields) -> RunConfig:
    raw = tiny_raw(tiny_data, run_dir, train={"steps": STEPS, "episodes_per_step": 1, "log_every": 1, "val_every": 3,
                                               "checkpoint_every": 1, "keep_checkpoints": STEPS, "threads": 1,
                                               **train_fields})
    raw["model"].update(model or {})
    raw["data"]["binarize"] = "dynamic"  # the episodes' own noise must follow the episode, too
    return RunConfig.from_dict(raw)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def params(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(dict(list_checkpoints(run_dir))[step])["model"]


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory, ray_session) -> Path:
    """2 workers × 1 episode per step, 6 steps, a checkpoint after each."""
    run = tmp_path_factory.mktemp("ray") / "reference"
    final = train_distributed(config(tiny_data, run), Launch(workers=2), quiet=True)
    assert final["step"] == STEPS
    return run


def test_ddp_step_equals_one_process_step_over_the_union(reference, tiny_data, tmp_path):
    # the same run in one process: 2 episodes per step = the union of the two workers' episodes
    union = tmp_path / "union"
    train(config(tiny_data, union, episodes_per_step=2), context=QUIET)
    for step in range(1, STEPS + 1):
        ddp, one = params(reference, step), params(union, step)
        for name in ddp:
            torch.testing.assert_close(ddp[name], one[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"step {step}, {name}: {m}")
    assert [s for s, _ in losses(reference)] == list(range(1, STEPS + 1))
    for (_, a), (_, b) in zip(losses(reference), losses(union)):
        assert a == pytest.approx(b, rel=1e-6)
    # not vacuous: rank 0's episodes alone take another step
    alone = tmp_path / "alone"
    train(config(tiny_data, alone, steps=1, keep_checkpoints=1), context=QUIET)
    assert not torch.allclose(params(alone, 1)["decoder.weight"], params(reference, 1)["decoder.weight"], atol=1e-4)


def test_ray_run_directory(reference):
    final = json.loads((reference / FINAL_FILE).read_text())
    assert final["world_size"] == 2 and final["episodes_per_step"] == 2  # the global batch, recorded with the run
    assert 0.0 <= final["train"]["data_wait"] <= 1.0
    assert (reference / "config.yaml").is_file()
    events = list((reference / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1  # rank 0 writes, nobody else
    state = load_checkpoint(list_checkpoints(reference)[-1][1])
    assert sorted(state["rng_by_rank"]) == [0, 1] and state["world_size"] == 2
    assert not torch.equal(state["rng_by_rank"][0]["torch"], state["rng_by_rank"][1]["torch"])
    assert state["stream"]["world_size"] == 2 and state["stream"]["step"] == STEPS
    # Ray's copies of the newest checkpoints, keep_checkpoints of them
    fits = list((reference / RAY_DIR).glob("fit-*"))
    assert len(fits) == 1
    assert sorted(p.name for p in fits[0].glob("checkpoint_0*")) == [f"checkpoint_{s:08d}" for s in range(1, STEPS + 1)]


def test_a_killed_worker_resumes_from_the_last_checkpoint_and_resume_continues_exactly(reference, tiny_data, tmp_path):
    run = tmp_path / "faulty"
    marker = tmp_path / "killed"
    load_plugins([faulty.PLUGIN])  # registered here and in every Ray worker
    model = {"name": "faulty", "kill_at_call": 3, "kill_rank": 1, "marker": str(marker)}
    # 4 steps, a checkpoint every 2: rank 1 dies in step 3, one step after the step-2 checkpoint
    cfg = config(tiny_data, run, model, steps=4, checkpoint_every=2)
    final = train_distributed(cfg, Launch(workers=2, max_failures=1), quiet=True)
    assert marker.is_file(), "the fault was not injected"
    assert final["step"] == 4 and final["resumed_from"] == 2  # lost no more than the step since the checkpoint
    assert Path(final["ray"]["checkpoint"]).name == "checkpoint_00000004"

    # resume the finished run to step 6 in a new fit: from RUN_DIR/checkpoints, the same trajectory
    final = train_distributed(cfg.with_overrides([f"train.steps={STEPS}"]), Launch(workers=2), resume=True, quiet=True)
    assert final["step"] == STEPS and final["resumed_from"] == 4

    assert losses(run) == losses(reference)  # bitwise, step by step (metrics.jsonl rewritten after the checkpoint)
    for step in (4, STEPS):
        a, b = params(run, step), params(reference, step)
        assert all(torch.equal(a[k], b[k]) for k in a), f"parameters differ at step {step}"
