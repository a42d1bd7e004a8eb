"""Runs on object storage: a real S3-compatible server (moto in server mode, tests/s3server.py) on 127.0.0.1.

In-process (``varmem train --out s3://…``): the run's files land on the server (config, metrics, TensorBoard
events, final metrics, checkpoints in Ray Train's layout ``checkpoints/checkpoint_N/ckpt-N.pt``), a
``--resume`` continues it exactly (the same losses and parameters as an uninterrupted run), ``varmem eval``
and ``varmem.load_run`` read it from the URI, a corrupt newest checkpoint is set aside, and the test
credentials appear in nothing varmem wrote or printed. The Ray side — two ``ray start`` nodes sharing only
the S3 endpoint, a worker killed mid-run, ``--resume`` exact — is scripts/ci_two_node.sh (run by .ci/run).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.helpers import tiny_raw, write_config
from tests.episodes.tiny import TinySource
from tests.s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY, s3_fixture
from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.remote_run import RemoteRun, train_remote
from varmem.distributed.rundir import load_checkpoint
from varmem.distributed.run import load_run
from varmem.episodes.build import build_dataset
from varmem.episodes.preprocess import Preprocessing

s3 = s3_fixture("module")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_uri(s3) -> str:
    uri = s3.uri("data/tiny")
    build_dataset(TinySource(alphabets=3, per_alphabet=6, n=10), uri, preprocessing=Preprocessing.default(26),
                  progress=False, workers=1)
    return uri


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VARMEM_CACHE_DIR", str(tmp_path / "cache"))


def tiny(data: str, out: str, **train) -> RunConfig:
    return RunConfig.from_dict(tiny_raw(data, out, train={"steps": 8, "checkpoint_every": 2, "keep_checkpoints": 2,
                                                          "threads": 1, **train}))


def train_rows(run: RemoteRun) -> list[tuple[int, float]]:
    rows = map(json.loads, run.location.child("metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def test_an_in_process_run_on_s3_resumes_exactly(s3, data_uri, capsys):
    full = RemoteRun(s3.uri("runs/full"))
    train_remote(tiny(data_uri, full.uri), quiet=True)
    part = RemoteRun(s3.uri("runs/part"))
    train_remote(tiny(data_uri, part.uri, steps=4), quiet=True)
    assert [s for s, _ in part.list_checkpoints()] == [2, 4]
    train_remote(tiny(data_uri, part.uri), resume=True, quiet=True)  # steps 5..8
    objects = s3.objects("runs/part")
    assert {"runs/part/config.yaml", "runs/part/metrics.jsonl", "runs/part/final_metrics.json",
            "runs/part/checkpoints/checkpoint_00000006/ckpt-00000006.pt",
            "runs/part/checkpoints/checkpoint_00000008/ckpt-00000008.pt"} <= set(objects)
    assert not [k for k in objects if "checkpoint_00000004" in k or "checkpoint_00000002" in k]  # keep_checkpoints 2
    assert len([k for k in objects if "/tensorboard/events.out.tfevents." in k]) == 2  # one per attempt
    assert train_rows(part) == train_rows(full) and [s for s, _ in train_rows(full)] == list(range(1, 9))
    a, b = load_checkpoint(full.checkpoint_location(8))["model"], load_checkpoint(part.checkpoint_location(8))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = part.read_final()
    assert final["run_dir"] == part.uri and final["checkpoint"] == part.checkpoint_location(8).uri and final["resumed_from"] == 4
    saved = RunConfig.from_dict(__import__("yaml").safe_load(part.location.child("config.yaml").read_text()))
    assert saved.run.out == part.uri and saved.data.dir == data_uri
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(up to step 8\)"):
        train_remote(tiny(data_uri, part.uri), quiet=True)


def test_load_run_and_varmem_eval_read_a_run_on_s3(s3, data_uri, tmp_path):
    run = RemoteRun(s3.uri("runs/eval"))
    train_remote(tiny(data_uri, run.uri, steps=4), quiet=True)
    loaded = load_run(run.uri)
    assert loaded.step == 4 and str(loaded.checkpoint) == run.checkpoint_location(4).uri
    assert str(loaded.dataset.directory) == data_uri
    assert load_run(Path(run.uri)).step == 4  # what pathlib makes of the URI (cli_eval's type=Path) still works
    env = {**os.environ, **s3.env, "VARMEM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "varmem", "eval", run.uri, "--plugin", "tests.distributed.standin",
                           "--samples", "4", "--episodes", "2", "--tasks", "none", "--tables", "none", "--no-pictures",
                           "--json", "--quiet"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["step"] == 4 and result["run_dir"] == run.uri and result["checkpoint"] == run.checkpoint_location(4).uri
    assert TEST_SECRET_KEY not in done.stdout + done.stderr and TEST_ACCESS_KEY not in done.stdout + done.stderr


def test_a_corrupt_newest_checkpoint_on_s3_is_set_aside_on_resume(s3, data_uri, capsys):
    run = RemoteRun(s3.uri("runs/corrupt"))
    train_remote(tiny(data_uri, run.uri, steps=4), quiet=True)
    key = "runs/corrupt/checkpoints/checkpoint_00000004/ckpt-00000004.pt"
    data = bytearray(s3.read(key))
    data[len(data) // 2] ^= 0xFF
    s3.write(key, bytes(data))
    final = train_remote(tiny(data_uri, run.uri, steps=6), resume=True, quiet=True)
    assert final["resumed_from"] == 2 and final["step"] == 6
    err = capsys.readouterr().err
    assert f"checkpoint {run.checkpoint_location(4).uri}" in err and "kept as ckpt-00000004.pt.corrupt" in err
    assert key + ".corrupt" in s3.objects("runs/corrupt")


def test_the_cli_keeps_credentials_out_of_everything(s3, data_uri, tmp_path):
    """`varmem train --out s3://… --s3-endpoint …` with the test credentials in the environment: they are in
    no object on the server, no local file varmem wrote (working copy, cache) and nothing printed."""
    out = s3.uri("runs/cli")
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(data_uri, out, train={"steps": 2, "checkpoint_every": 2,
                                                                                 "threads": 1}))
    env = {k: v for k, v in {**os.environ, **s3.env}.items() if k != "AWS_ENDPOINT_URL"}  # the endpoint by flag only
    env.update(VARMEM_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-m", "varmem", "train", "--config", str(config), "--s3-endpoint", s3.endpoint,
                           "--plugin", "tests.distributed.standin"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"storage:\n  s3_endpoint: {s3.endpoint}" in s3.read("runs/cli/config.yaml").decode()
    secrets = (TEST_ACCESS_KEY.encode(), TEST_SECRET_KEY.encode())
    written = {k: s3.read(k) for k in s3.objects()}
    written.update({str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()})
    written["stdout+stderr"] = (done.stdout + done.stderr).encode()
    assert any("tfevents" in k for k in written) and any(k.endswith(".arrow") for k in written)  # not vacuous
    leaks = [k for k, data in written.items() if any(s in data for s in secrets)]
    assert leaks == [], leaks


def test_varmem_eval_takes_the_s3_endpoint_by_flag(s3, data_uri, tmp_path):
    """`varmem eval s3://… --s3-endpoint URL` with no endpoint in the environment or the run's config: the run,
    its checkpoint and its dataset on S3 are read through the flag's server; a bad URL is one line."""
    run = RemoteRun(s3.uri("runs/eval-flag"))
    train_remote(tiny(data_uri, run.uri, steps=2), quiet=True)
    assert "s3_endpoint: ''" in run.location.child("config.yaml").read_text()  # the run names no endpoint
    env = {k: v for k, v in {**os.environ, **s3.env}.items() if k not in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    env.update(VARMEM_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "varmem", "eval", run.uri, "--plugin", "tests.distributed.standin", "--samples", "4",
            "--episodes", "2", "--tasks", "none", "--tables", "none", "--no-pictures", "--json", "--quiet"]
    without = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert without.returncode != 0  # not vacuous: without the flag there is no way to the server
    done = subprocess.run(argv + ["--s3-endpoint", s3.endpoint], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["step"] == 2 and result["checkpoint"] == run.checkpoint_location(2).uri
    assert result["run_dir"] == run.uri
    bad = subprocess.run(argv + ["--s3-endpoint", "ftp://127.0.0.1:1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("varmem: error: ") and bad.stderr.count("\n") == 1, bad.stderr
    assert "ftp://127.0.0.1:1" in bad.stderr
