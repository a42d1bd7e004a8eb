"""train.cpu_budget_s / ``varmem train --cpu-budget`` (issue 17): a run stops at the first step boundary where its
CPU time — this session's process time plus the earlier sessions' from the checkpoint, summed over Ray workers —
reaches the budget, then validates and checkpoints as at train.steps; ``cpu_s`` is in every training row and in
final_metrics.json with ``stopped_by``.

Most tests use a stand-in CPU clock (one CPU second per training step, nothing else costs anything) so that the
step the run stops at is exact; the others read the real process time and bound it by what the process spent."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from varmem.cli import main
from varmem.distributed import train_loop
from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.rundir import FINAL_FILE, METRICS_FILE, list_checkpoints, load_checkpoint
from varmem.distributed.train_loop import TrainContext, Trainer, train
from tests.distributed.helpers import tiny_raw, write_config

QUIET = TrainContext(quiet=True)


def raw_config(tiny_data: Path, run_dir: Path, **train_fields) -> dict:
    return tiny_raw(tiny_data, run_dir, train={"steps": 50, "log_every": 1, "val_every": 0, "checkpoint_every": 4,
                                               "keep_checkpoints": 5, **train_fields})


def config(tiny_data: Path, run_dir: Path, **train_fields) -> RunConfig:
    return RunConfig.from_dict(raw_config(tiny_data, run_dir, **train_fields))


def rows(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / METRICS_FILE).read_text().splitlines()) if r["kind"] == kind]


def final(run_dir: Path) -> dict:
    return json.loads((run_dir / FINAL_FILE).read_text())


class CpuClock:
    """Stands in for ``time.process_time``: it advances one second per training step and at nothing else."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> CpuClock:
    cpu = CpuClock()
    monkeypatch.setattr(train_loop.time, "process_time", cpu)
    step = Trainer.step

    def one_cpu_second(self) -> None:
        step(self)
        cpu.now += 1.0

    monkeypatch.setattr(Trainer, "step", one_cpu_second)
    return cpu


def stop_after_checkpoint(step: int) -> TrainContext:
    """A context whose report raises right after the checkpoint at ``step``: a session that ends there."""

    class Stop(Exception):
        pass

    def report(metrics, checkpoint):
        if checkpoint is not None and metrics["step"] == step:
            raise Stop(step)

    context = TrainContext(quiet=True, report=report, report_logs=False)
    context.Stop = Stop
    return context


def test_the_run_stops_at_the_first_step_boundary_where_its_cpu_time_reaches_the_budget(clock, tiny_data, tmp_path):
    run = tmp_path / "run"
    result = train(config(tiny_data, run, cpu_budget_s=5.5), context=QUIET)
    assert result == final(run)
    assert result["step"] == 6 and result["steps"] == 50  # 5 CPU seconds after step 5, 6 after step 6
    assert result["stopped_by"] == "cpu_budget" and result["cpu_s"] == 6.0 and result["cpu_budget_s"] == 5.5
    assert [r["cpu_s"] for r in rows(run)] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [r["step"] for r in rows(run, "val")] == [6]  # the final validation, as at train.steps
    assert [s for s, _ in list_checkpoints(run)] == [4, 6]  # and the final checkpoint
    assert load_checkpoint(dict(list_checkpoints(run))[6])["cpu_s"] == 6.0
    assert result["checkpoint"].endswith("ckpt-00000006.pt")


def test_a_resumed_session_counts_on_from_the_checkpoints_cpu_time(clock, tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = config(tiny_data, run, cpu_budget_s=5.5)
    first = stop_after_checkpoint(4)
    with pytest.raises(first.Stop):
        train(cfg, context=first)
    assert load_checkpoint(dict(list_checkpoints(run))[4])["cpu_s"] == 4.0
    clock.now = 0.0  # a new process: its process time starts again near 0
    result = train(cfg, resume=True, context=QUIET)
    # 4 CPU seconds before the resume + 2 after it: counting from 0 again would have trained to step 10
    assert result["resumed_from"] == 4 and result["step"] == 6
    assert result["stopped_by"] == "cpu_budget" and result["cpu_s"] == 6.0
    cpu = [r["cpu_s"] for r in rows(run)]
    assert cpu == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # monotone across the resume: the uninterrupted run's values


def test_a_run_resumed_after_its_budget_was_spent_trains_nothing(clock, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = config(tiny_data, run, cpu_budget_s=2.5)
    done = train(cfg, context=QUIET)
    assert (done["step"], done["stopped_by"]) == (3, "cpu_budget")
    capsys.readouterr()
    assert train(cfg, resume=True, context=TrainContext()) == done  # complete: its final metrics, nothing trained
    assert "is complete at step 3" in capsys.readouterr().out
    (run / FINAL_FILE).unlink()  # ended after the final checkpoint, before final_metrics.json: only that is missing
    clock.now = 0.0
    again = train(cfg, resume=True, context=QUIET)
    assert (again["step"], again["resumed_from"], again["stopped_by"], again["cpu_s"]) == (3, 3, "cpu_budget", 3.0)
    assert [s for s, _ in list_checkpoints(run)] == [3] and len(rows(run)) == 3
    assert "nll_bound" in again["val"]  # the final validation ran again


def test_a_finished_run_copied_and_resumed_with_a_larger_budget_is_the_longer_run(clock, tiny_data, tmp_path):
    # scripts/cpu_budget_experiments.sh's cell 5 (issue 17): the 3-hour run is the 1-hour winner's run continued, not
    # retrained; that holds when a budget only says where a run stops. The copy holds what the script copies.
    import shutil
    import torch
    short = tmp_path / "short"
    first = train(config(tiny_data, short, cpu_budget_s=3.5), context=QUIET)
    assert (first["step"], first["stopped_by"]) == (4, "cpu_budget")
    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", METRICS_FILE):
        shutil.copy(short / name, copy / name)
    shutil.copy(list_checkpoints(short)[-1][1], copy / "checkpoints")
    clock.now = 0.0  # a new process
    extended = train(config(tiny_data, copy, cpu_budget_s=7.5), resume=True, context=QUIET)
    clock.now = 100.0
    whole = train(config(tiny_data, tmp_path / "whole", cpu_budget_s=7.5), context=QUIET)
    assert (extended["step"], extended["resumed_from"], extended["cpu_s"]) == (8, 4, 8.0)
    assert (whole["step"], whole["cpu_s"]) == (8, 8.0)
    assert [r["loss"] for r in rows(copy)] == [r["loss"] for r in rows(tmp_path / "whole")]
    assert len(rows(copy)) == 8
    a = load_checkpoint(list_checkpoints(copy)[-1][1])["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "whole")[-1][1])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(list_checkpoints(short)[-1][1])["step"] == 4  # the source run is untouched


def test_a_run_whose_steps_end_first_says_so(clock, tiny_data, tmp_path):
    result = train(config(tiny_data, tmp_path / "run", steps=4, cpu_budget_s=4.5), context=QUIET)
    assert (result["step"], result["stopped_by"], result["cpu_s"]) == (4, "steps", 4.0)
    unbounded = train(config(tiny_data, tmp_path / "none", steps=3), context=QUIET)
    assert (unbounded["step"], unbounded["stopped_by"], unbounded["cpu_budget_s"], unbounded["cpu_s"]) == (3, "steps", None, 3.0)


@pytest.mark.parametrize("budget", [0, 0.0, -1, -3600.5])
def test_a_budget_that_is_not_positive_is_a_config_error_naming_the_field(tiny_data, tmp_path, budget):
    with pytest.raises(ConfigError, match=r"^train\.cpu_budget_s must be > 0 CPU seconds"):
        config(tiny_data, tmp_path / "run", cpu_budget_s=budget)
    with pytest.raises(ConfigError, match=r"train\.cpu_budget_s"):
        RunConfig.from_dict(raw_config(tiny_data, tmp_path / "run")).with_overrides([f"train.cpu_budget_s={budget}"])


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan"])
def test_cli_cpu_budget_errors_are_one_line_and_write_nothing(tiny_data, tmp_path, capsys, value):
    path = write_config(tmp_path / "c.yaml", raw_config(tiny_data, tmp_path / "run"))
    rc = main(["train", "--config", str(path), f"--cpu-budget={value}", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("varmem: error: ") and err.count("\n") == 1, err
    assert "train.cpu_budget_s" in err, err
    assert not (tmp_path / "run").exists()


def test_cli_cpu_budget_on_the_process_clock(tiny_data, tmp_path, capsys):
    """The real process time: the run's CPU seconds reach the budget and are no more than the process spent."""
    run = tmp_path / "run"
    path = write_config(tmp_path / "c.yaml", raw_config(tiny_data, run, steps=1_000_000, log_every=20,
                                                         checkpoint_every=1_000_000))
    before = time.process_time()
    rc = main(["train", "--config", str(path), "--cpu-budget", "1.0", "--quiet"])
    spent = time.process_time() - before
    assert rc == 0, capsys.readouterr().err
    result = final(run)
    assert result["stopped_by"] == "cpu_budget" and 1 <= result["step"] < 1_000_000
    assert 1.0 <= result["cpu_s"] <= spent
    assert RunConfig.from_yaml(run / "config.yaml").train.cpu_budget_s == 1.0  # recorded with the run
    cpu = [r["cpu_s"] for r in rows(run)]
    assert cpu == sorted(cpu) and cpu[-1] >= 1.0 and result["cpu_s"] >= cpu[-1]
    assert load_checkpoint(dict(list_checkpoints(run))[result["step"]])["cpu_s"] <= result["cpu_s"]


def test_cpu_seconds_are_monotone_across_a_resume_on_the_process_clock(tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = config(tiny_data, run, steps=8, cpu_budget_s=1e6)
    first = stop_after_checkpoint(4)
    with pytest.raises(first.Stop):
        train(cfg, context=first)
    saved = load_checkpoint(dict(list_checkpoints(run))[4])["cpu_s"]
    before = time.process_time()
    result = train(cfg, resume=True, context=QUIET)
    spent = time.process_time() - before
    assert result["stopped_by"] == "steps" and result["step"] == 8
    cpu = [r["cpu_s"] for r in rows(run)]
    assert cpu == sorted(cpu) and cpu[3] <= saved < cpu[4]  # rows 1–4 before the checkpoint, 5–8 after it
    assert saved < result["cpu_s"] <= saved + spent  # this session's CPU added to the checkpoint's


@pytest.mark.ray
def test_ray_workers_share_one_budget(tiny_data, tmp_path, ray_session):
    """--workers 2: the budget is the sum of both workers' CPU time, not each worker's own."""
    from varmem.distributed.ray_train import Launch, train_distributed

    run = tmp_path / "ray"
    cfg = config(tiny_data, run, steps=1_000_000, episodes_per_step=1, log_every=20, checkpoint_every=1_000_000,
                 threads=1, cpu_budget_s=4.0)
    result = train_distributed(cfg, Launch(workers=2), quiet=True)
    assert result["stopped_by"] == "cpu_budget" and result["world_size"] == 2 and result["cpu_s"] >= 4.0
    ckpt = load_checkpoint(dict(list_checkpoints(run))[result["step"]])
    shares = ckpt["cpu_s_by_rank"]
    assert sorted(shares) == [0, 1] and all(s > 0 for s in shares.values())
    assert ckpt["cpu_s"] == pytest.approx(sum(shares.values()), rel=1e-12)
    assert max(shares.values()) < 4.0  # stopped on the sum: neither worker alone had reached the budget
