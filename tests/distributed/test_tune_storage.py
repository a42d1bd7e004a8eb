"""``varmem tune --out s3://…``: a search whose directory is on object storage (moto in server mode,
tests/s3server.py), its signed state checked through the storage layer.

* No Ray: the signature of a search's state on S3 — signed, verified, and refused (one line naming the
  object) when a pickled object changed or was added, before any cluster is reached.
* Ray, in a subprocess with the S3 variables in its environment (as a user's shell has them; the
  session's Ray cluster was started without them): 2 trials of 8 steps, one at a time; the first interrupts
  the search after its step-4 checkpoint; ``--resume`` finishes it from that checkpoint, read from S3,
  and runs the second. Everything lands on the server, the checkpoints once (none in Tune's experiment),
  and the test credentials are in nothing varmem wrote or printed. ≈ 60–90 s on 2 loaded cores.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import varmem.distributed.cluster as cluster
from tests.distributed.helpers import tiny_raw, write_config
from tests.s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY, s3_fixture
from varmem.cli import main
from varmem.distributed.search import trust
from varmem.distributed.search.searchdir import RESULTS_CSV, SEARCH_FILE, SIGNATURE_FILE

s3 = s3_fixture("module")
ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


@pytest.fixture(autouse=True)
def search_key(tmp_path, monkeypatch):
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "search_key"))


@pytest.fixture()
def no_cluster(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the search reached the Ray cluster")

    monkeypatch.setattr(cluster, "connect", refuse)


def test_the_state_of_a_search_on_s3_is_signed_and_checked_there(s3, tmp_path, capsys, no_cluster):
    prefix = "searches/signed"
    uri = s3.uri(prefix)
    s3.write(f"{prefix}/{SEARCH_FILE}", b"# written by varmem tune\nconfig: {}\n")
    s3.write(f"{prefix}/tune/tuner.pkl", b"pickle bytes")
    s3.write(f"{prefix}/tune/trial_1/params.pkl", b"more pickle bytes")
    s3.write(f"{prefix}/tune/trial_1/result.json", b"{}\n")  # data: not signed
    trust.sign(uri)
    signed = json.loads(s3.read(f"{prefix}/{SIGNATURE_FILE}"))["files"]
    assert sorted(signed) == [SEARCH_FILE, "tune/trial_1/params.pkl", "tune/tuner.pkl"]
    trust.verify(uri)
    s3.write(f"{prefix}/tune/trial_1/result.json", b'{"step": 2}\n')  # Tune's data files may change
    trust.verify(uri)

    s3.write(f"{prefix}/tune/tuner.pkl", b"pickle bytes, changed")
    with pytest.raises(trust.UntrustedSearch, match=f"{uri}/tune/tuner.pkl changed after varmem signed"):
        trust.verify(uri)
    trust.sign(uri)
    s3.write(f"{prefix}/tune/trial_2/error.pkl", b"added")
    with pytest.raises(trust.UntrustedSearch, match=f"{uri}/tune/trial_2/error.pkl is not covered by {uri}/{SIGNATURE_FILE}"):
        trust.verify(uri)
    rc = main(["tune", "--resume", "--out", uri])  # refused before the cluster (no_cluster) or Ray reads a pickle
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("varmem: error: refusing to resume") and err.count("\n") == 1, err
    assert "error.pkl is not covered" in err and trust.TRUST_FLAG in err


def test_overwrite_and_fresh_search_on_s3_refuse_a_held_search(s3, tiny_data, tmp_path, capsys, no_cluster):
    uri = s3.uri("searches/held")
    s3.write(f"searches/held/{SEARCH_FILE}", b"config: {}\n")
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(tiny_data, tmp_path / "unused"))
    (tmp_path / "space.yaml").write_text("optim.lr: {grid: [1.0e-3]}\n")
    rc = main(["tune", "--config", str(config), "--space", str(tmp_path / "space.yaml"), "--out", uri])
    err = capsys.readouterr().err
    assert rc == 2 and f"{uri} already holds a search" in err


# --- a search on S3, interrupted and resumed, in a subprocess -----------------------------------


@pytest.fixture()
def short_ray_tmpdir():
    """The subprocess's own Ray temp folder, short (Ray's socket paths must fit in 107 bytes)."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="vmray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)

RUN_TUNE = """
import os, sys, yaml
path = sys.argv[1]
raw = yaml.safe_load(open(path))
raw["model"]["pid"] = os.getpid()  # the interrupting model signals this process: the search's driver
open(path, "w").write(yaml.safe_dump(raw))
from varmem.cli import main
sys.exit(main(sys.argv[2:]))
"""


def tune(argv: list[str], config: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_TUNE, str(config), "tune", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=400)


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_on_s3_is_interrupted_and_resumed_from_the_storage(s3, tiny_data, tmp_path, short_ray_tmpdir):
    prefix = "searches/tiny"
    uri = s3.uri(prefix)
    marker = tmp_path / "interrupted"
    raw = tiny_raw(tiny_data, tmp_path / "unused-run", train={
        "steps": STEPS, "episodes_per_step": 1, "log_every": 2, "val_every": 2, "checkpoint_every": 4, "threads": 1})
    raw["model"].update(name="interrupting", interrupt_at_call=6, marker=str(marker))
    config = write_config(tmp_path / "tiny.yaml", raw)
    (tmp_path / "space.yaml").write_text("optim.lr: {grid: [1.0e-3, 1.0e-2]}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3.env, PYTHONPATH=str(ROOT), VARMEM_CACHE_DIR=str(tmp_path / "cache"), RAY_TMPDIR=short_ray_tmpdir)
    (tmp_path / "work").mkdir()

    first = tune(["--config", str(config), "--space", str(tmp_path / "space.yaml"), "--plugin", "tests.distributed.interrupt",
                  "--max-concurrent", "1", "--out", uri, "--quiet"], config, env, tmp_path / "work")
    assert marker.is_file(), first.stderr[-3000:]
    assert first.returncode == 130, first.stderr[-3000:]
    assert f"varmem tune --resume --out {uri}" in first.stdout
    rows = list(csv.DictReader(io.StringIO(s3.read(f"{prefix}/{RESULTS_CSV}").decode())))
    assert [(r["status"], r["steps"]) for r in rows] == [("unfinished", "4")]
    trial = rows[0]["trial"]
    assert rows[0]["run_dir"] == f"{uri}/trials/{trial}"
    trust.verify(uri)  # the interrupted search's state on S3 carries our signature
    signed = json.loads(s3.read(f"{prefix}/{SIGNATURE_FILE}"))["files"]
    assert "tune/tuner.pkl" in signed and any(name.startswith("tune/experiment_state-") for name in signed)

    second = tune(["--resume", "--out", uri, "--plugin", "tests.distributed.interrupt", "--quiet"], config, env,
                  tmp_path / "work")
    assert second.returncode == 0, second.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(s3.read(f"{prefix}/{RESULTS_CSV}").decode())))
    assert len(rows) == 2 and rows[0]["trial"] == trial and rows[0]["status"] == "finished", rows
    final = json.loads(s3.read(f"{prefix}/trials/{trial}/final_metrics.json"))
    assert final["resumed_from"] == 4 and final["step"] == STEPS  # from its checkpoint on S3, not from scratch
    assert final["run_dir"] == f"{uri}/trials/{trial}"
    assert rows[1]["status"] == "finished"

    objects = s3.objects(prefix)
    for r in rows:  # each trial's checkpoints once, in its run directory on S3; none in Tune's experiment
        assert f"{prefix}/trials/{r['trial']}/checkpoints/checkpoint_{STEPS:08d}/ckpt-{STEPS:08d}.pt" in objects
    assert not [k for k in objects if k.startswith(f"{prefix}/tune/") and (k.endswith(".pt") or "/checkpoint_" in k)]
    best = yaml.safe_load(s3.read(f"{prefix}/best_config.yaml"))
    assert best["run"]["out"] == f"{uri}/best" and best["optim"]["lr"] in (1e-3, 1e-2)
    assert not any((tmp_path / "work").iterdir())  # nothing of the search in the working directory

    secrets = (TEST_ACCESS_KEY.encode(), TEST_SECRET_KEY.encode())
    written = {k: s3.read(k) for k in objects}
    written["output"] = (first.stdout + first.stderr + second.stdout + second.stderr).encode()
    assert [k for k, data in written.items() if any(s in data for s in secrets)] == []
