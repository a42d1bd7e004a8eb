"""`varmem train --workers N` and `python -m varmem.distributed.train`: bad input is one line, status 2,
before any worker starts and before anything is written; how a worker picks its checkpoint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import varmem.distributed.cluster as cluster
from varmem.distributed import train as train_module
from varmem.cli import main
from varmem.distributed.train_loop import TrainContext, train
from varmem.distributed.worker import resume_source
from tests.distributed.helpers import tiny_raw, write_config


def run(argv, capsys, entry=main):
    rc = entry([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def cfg_file(tiny_data, tmp_path) -> Path:
    raw = tiny_raw(tiny_data, tmp_path / "run", train={"steps": 2, "episodes_per_step": 1, "threads": 1})
    return write_config(tmp_path / "tiny.yaml", raw)


@pytest.fixture()
def no_cluster(monkeypatch):
    """These errors must come before the driver touches Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("the driver reached the Ray cluster")

    monkeypatch.setattr(cluster, "connect", refuse)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "optim.lrr=1"], "unknown key 'lrr' in optim"),
        (["--set", "train.steps=many"], "train.steps must be an integer, got 'many'"),
        (["--set", "optim.lr=-1"], "optim.lr must be > 0"),
        (["--set", "train.noise=global"], "train.noise must be one of episode, rank"),
        (["--set", "data.dir={tmp}/no-such-data"], "no-such-data"),
        (["--set", "model.factory=tests.distributed.nope:build"], "model.factory"),
        (["--set", "data.image_size=28"], "data.image_size is 28"),
        (["--resume"], "nothing to resume"),
        (["--workers", "-1"], "--workers must be ≥ 0"),
        (["--gpus-per-worker", "-1"], "--gpus-per-worker must be ≥ 0"),
        (["--max-failures", "-2"], "--max-failures must be ≥ 0"),
    ],
)
@pytest.mark.parametrize("entry", [main, train_module.main], ids=["varmem", "python-m"])
def test_bad_input_fails_before_any_worker(cfg_file, tmp_path, capsys, no_cluster, extra, message, entry):
    argv = (["train"] if entry is main else []) + ["--config", cfg_file, "--workers", "2"]
    rc, out, err = run(argv + [a.replace("{tmp}", str(tmp_path)) for a in extra], capsys, entry)
    assert rc == 2
    assert err.startswith("varmem: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_ray_flags_need_workers(cfg_file, tmp_path, capsys, no_cluster):
    rc, _, err = run(["train", "--config", cfg_file, "--gpus-per-worker", "1"], capsys)
    assert rc == 2 and "add --workers N" in err


def test_resume_with_another_number_of_workers_is_refused(cfg_file, tmp_path, capsys, no_cluster):
    rc, _, err = run(["train", "--config", cfg_file, "--quiet"], capsys)  # in-process: world size 1
    assert rc == 0, err
    rc, _, err = run(["train", "--config", cfg_file, "--resume", "--steps", "4", "--workers", "2"], capsys)
    assert rc == 2 and "trained with 1 worker(s)" in err and "--workers 2" in err, err


def test_relative_paths_are_refused_inside_a_ray_job(cfg_file, tmp_path, capsys, monkeypatch, no_cluster):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(["train", "--config", cfg_file, "--out", "runs/x", "--workers", "2"], capsys)
    assert rc == 2 and "run.out='runs/x' must be absolute" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.ray
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workers", "5"], "5 worker(s) × 1 CPU = 5 CPUs but it has 4"),
        (["--workers", "1", "--gpus-per-worker", "1"], "1 GPUs but it has 0"),
    ],
)
def test_more_than_the_cluster_has_fails_before_any_worker(cfg_file, tmp_path, capsys, ray_session, flags, message):
    rc, out, err = run(["train", "--config", cfg_file] + flags, capsys)
    assert rc == 2 and "cannot hold this run" in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_worker_starts_from_the_newer_of_rays_checkpoint_and_the_run_directorys(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    from varmem.distributed.config import RunConfig

    train(RunConfig.from_dict(tiny_raw(tiny_data, run_dir, train={"steps": 4, "checkpoint_every": 2, "keep_checkpoints": 3})),
          context=TrainContext(quiet=True))
    ckpts = run_dir / "checkpoints"
    ray_dir = tmp_path / "ray" / "checkpoint_00000002"
    ray_dir.mkdir(parents=True)
    (ray_dir / "ckpt-00000002.pt").write_bytes((ckpts / "ckpt-00000002.pt").read_bytes())
    assert resume_source(run_dir, ray_dir / "ckpt-00000002.pt") == ckpts / "ckpt-00000004.pt"  # rank 0's newer file
    (ckpts / "ckpt-00000004.pt").unlink()
    assert resume_source(run_dir, ray_dir / "ckpt-00000002.pt") == ckpts / "ckpt-00000002.pt"  # a tie: the run dir's
    (ckpts / "ckpt-00000002.pt").unlink()
    assert resume_source(run_dir, ray_dir / "ckpt-00000002.pt") == ray_dir / "ckpt-00000002.pt"
    assert resume_source(run_dir, None) is None


def test_an_unreachable_address_fails_at_once():
    with pytest.raises(cluster.ConfigError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        cluster.probe("127.0.0.1:1")
    cluster.probe("auto")  # Ray's own resolution: not probed here


def test_workers_0_trains_in_process_without_importing_ray(cfg_file, tmp_path):
    code = ("import sys; from varmem.cli import main; "
            f"rc = main(['train', '--config', {str(cfg_file)!r}, '--quiet', '--plugin', 'tests.distributed.standin']); "
            "assert rc == 0; assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "final_metrics.json").is_file()
