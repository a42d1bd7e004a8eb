"""Issue 10, the Ray and Tune items, each as its reproduction:

1. ``varmem tune --resume`` refuses a search whose pickled state varmem did not sign with this user's
   key, before anything reads it: a ``tuner.pkl`` whose ``__reduce__`` writes a marker never runs
   (no Ray needed); ``--trust-search-dir`` is the documented override.
3. A cluster varmem starts for itself listens on 127.0.0.1 only (its processes' listening sockets).
6. ``varmem train --workers N`` and ``varmem tune`` connect the same way, and with no ``--address`` and
   no ``RAY_ADDRESS`` they start a private cluster at once, whatever a stale ``ray_current_cluster``
   address file says.
16. ``varmem train --workers 2`` while another local Ray instance runs (the test session's) prints no
   traceback (``Found multiple active Ray instances`` from Ray Train's placement-group cleaner).

The cluster tests run in subprocesses (this process may hold the session's cluster), in their own
process group, stopped by its id if they overrun: the listening check ≈ 10 s, the 2-worker run ≈ 30 s.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import varmem.distributed.cluster as cluster
from varmem.cli import main
from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.search import trust
from varmem.distributed.search.searchdir import SEARCH_FILE, SIGNATURE_FILE, TUNE_DIR, SearchOptions, save_search
from varmem.distributed.search.space import load_space
from tests.distributed.helpers import tiny_raw, write_config

REPO = Path(__file__).resolve().parents[2]
SMOKE_SPACE = REPO / "configs" / "space_smoke.yaml"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def search_key(tmp_path, monkeypatch) -> Path:
    """This test's own signing key (never the user's ~/.config/varmem/search_key)."""
    path = tmp_path / "keys" / "search_key"
    monkeypatch.setenv(trust.KEY_ENV, str(path))
    return path


@pytest.fixture()
def no_cluster(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the search reached the Ray cluster")

    monkeypatch.setattr(cluster, "connect", refuse)


# --- 1. resuming a search someone else wrote -----------------------------------------------------


class WritesMarker:
    """A pickle that runs code when loaded: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def search_dir(tiny_data: Path, tmp_path: Path) -> Path:
    """A search directory as `varmem tune` leaves it after an interruption (search.yaml, Ray's state files),
    written without Ray: benign pickles where Ray keeps its state."""
    raw = tiny_raw(tiny_data, tmp_path / "unused-run", train={"steps": 8, "val_every": 2, "threads": 1})
    config = write_config(tmp_path / "tiny.yaml", raw)
    out = tmp_path / "search"
    (out / TUNE_DIR / "trial_00000").mkdir(parents=True)
    save_search(out, RunConfig.load(config), load_space(SMOKE_SPACE), SearchOptions(), tmp_path, str(SMOKE_SPACE))
    (out / TUNE_DIR / "tuner.pkl").write_bytes(pickle.dumps({"state": 1}))
    (out / TUNE_DIR / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    (out / TUNE_DIR / "trial_00000" / "params.pkl").write_bytes(pickle.dumps({"optim.lr": 1e-3}))
    (out / TUNE_DIR / "trial_00000" / "result.json").write_text('{"step": 2}\n')
    return out


def tamper(case: str, out: Path, evil: bytes, tmp_path: Path, monkeypatch) -> str:
    """Make ``out`` untrusted in one of the ways a search can be; returns what the error must say."""
    tuner = out / TUNE_DIR / "tuner.pkl"
    if case == "unsigned":  # received from elsewhere, or written before varmem signed searches
        tuner.write_bytes(evil)
        return f"{out / SIGNATURE_FILE} is missing, so varmem cannot tell who wrote {tuner}"
    if case == "another key":  # signed by another user
        tuner.write_bytes(evil)
        monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "their_key"))
        trust.sign(out)
        monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "keys" / "search_key"))
        return f"{tuner} was signed with another key than yours"
    trust.sign(out)  # ours, then changed
    if case == "replaced":
        tuner.write_bytes(evil)
        return f"{tuner} changed after varmem signed the search"
    if case == "added":  # a newer searcher state: Ray would load it
        added = out / TUNE_DIR / "basic-variant-state-2099-01-01_00-00-00.json"
        added.write_bytes(evil)
        return f"{added} is not covered by {out / SIGNATURE_FILE}"
    if case == "link":
        (tmp_path / "evil.pkl").write_bytes(evil)
        tuner.unlink()
        tuner.symlink_to(tmp_path / "evil.pkl")
        return f"{tuner} is a link or a special file"
    if case == "config":  # search.yaml is what --resume runs
        (out / SEARCH_FILE).write_text((out / SEARCH_FILE).read_text().replace("lr: 0.003", "lr: 0.5"))
        return f"{out / SEARCH_FILE} changed after varmem signed the search"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["unsigned", "another key", "replaced", "added", "link", "config"])
def test_a_pickle_that_runs_code_is_refused_before_it_is_read(tiny_data, tmp_path, capsys, monkeypatch, no_cluster, case):
    marker = tmp_path / "marker"
    live = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(WritesMarker(live)))
    assert live.is_file()  # the pickle does run code when something loads it
    out = search_dir(tiny_data, tmp_path)
    message = tamper(case, out, pickle.dumps(WritesMarker(marker)), tmp_path, monkeypatch)

    rc, _, err = run(["tune", "--resume", "--out", out], capsys)
    assert rc == 2 and err.startswith("varmem: error: refusing to resume ") and err.count("\n") == 1, err
    assert message in err and trust.TRUST_FLAG in err and "docs/TUNE.md" in err
    assert not marker.exists()  # nothing unpickled it


def test_the_override_is_documented_and_trusts_the_search(tiny_data, tmp_path, capsys, monkeypatch):
    docs = (REPO / "docs" / "TUNE.md").read_text(encoding="utf-8")
    assert "### Resuming a search someone else wrote" in docs and trust.TRUST_FLAG in docs
    out = search_dir(tiny_data, tmp_path)  # unsigned, benign

    def reached(*args, **kwargs):
        raise ConfigError("reached the cluster")

    monkeypatch.setattr(cluster, "connect", reached)
    rc, _, err = run(["tune", "--resume", "--out", out, "--check"], capsys)
    assert rc == 2 and f"{out / SIGNATURE_FILE} is missing" in err
    rc, out_text, err = run(["tune", "--resume", "--out", out, trust.TRUST_FLAG], capsys)
    assert rc == 2 and err == "varmem: error: reached the cluster\n", err  # the check was skipped
    assert f"warning: {trust.TRUST_FLAG}" in out_text
    rc, _, err = run(["tune", "--config", tmp_path / "tiny.yaml", "--space", SMOKE_SPACE, trust.TRUST_FLAG], capsys)
    assert rc == 2 and "only applies to --resume" in err

    trust.sign(out)  # a search signed with our key: resumable without the flag
    rc, out_text, err = run(["tune", "--resume", "--out", out, "--check"], capsys)
    assert rc == 0 and out_text.startswith("ok: "), err


def test_what_is_signed(tiny_data, tmp_path):
    out = search_dir(tiny_data, tmp_path)
    trust.sign(out)
    record = json.loads((out / SIGNATURE_FILE).read_text())
    assert sorted(record["files"]) == [SEARCH_FILE, "tune/experiment_state-2026-01-01_00-00-00.json",
                                       "tune/trial_00000/params.pkl", "tune/tuner.pkl"]
    # what Ray and varmem only parse as data changes as trials run: not signed
    (out / TUNE_DIR / "trial_00000" / "result.json").write_text('{"step": 4}\n')
    (out / TUNE_DIR / "trial_00000" / "checkpoint_000000").mkdir()
    (out / TUNE_DIR / "trial_00000" / "checkpoint_000000" / "ckpt-00000004.pt").write_bytes(b"weights")
    (out / TUNE_DIR / "trial_00000" / "events.out.tfevents.1.host").write_bytes(b"events")
    trust.verify(out)
    (out / TUNE_DIR / "trial_00000" / "error.pkl").write_bytes(pickle.dumps("boom"))  # Ray loads it: signed
    with pytest.raises(trust.UntrustedSearch, match="error.pkl is not covered"):
        trust.verify(out)
    os.mkfifo(out / TUNE_DIR / "fifo")  # never opened (it would block)
    (out / TUNE_DIR / "trial_00000" / "error.pkl").unlink()
    with pytest.raises(trust.UntrustedSearch, match="fifo is a link or a special file"):
        trust.verify(out)


def test_the_signing_key(tmp_path, monkeypatch):
    monkeypatch.delenv(trust.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "config" / "varmem" / "search_key"
    assert trust.key_file() == path
    key = trust.load_key()  # created on first use, for this user only
    assert len(key) == 32 and trust.load_key() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=f"can be read or written by other users .mode 0644.: run `chmod 600 {path}`"):
        trust.load_key()
    path.chmod(0o600)
    path.write_text("not hex\n")
    with pytest.raises(ConfigError, match="is not 64 hexadecimal digits"):
        trust.load_key()
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "elsewhere" / "key"))
    assert trust.key_file() == tmp_path / "elsewhere" / "key" and len(trust.load_key()) == 32


# --- 3, 6: a private cluster: on 127.0.0.1, never a stale address -----------------------------


def run_isolated(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``args`` in a process group of its own; on timeout every process of that group is killed."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args[:4])} ran longer than {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture()
def stale_ray_tmpdir():
    """A temp dir for Ray (RAY_TMPDIR) whose ray_current_cluster names a dead port, as a killed `ray start`
    leaves it: ``ray.init()`` follows it and retries for minutes. Short: Ray's socket paths must fit 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix="vm-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead}\n")
    yield root, dead
    shutil.rmtree(root, ignore_errors=True)


def clean_env(ray_tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", trust.KEY_ENV)}
    env.update(RAY_TMPDIR=str(ray_tmpdir), PYTHONPATH=str(REPO))
    return env


LISTENING = textwrap.dedent('''
    """Start a cluster through varmem's connect, run a task, list what its processes listen on."""
    import json, os, socket, sys, time

    def tree(root):
        children = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d))
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def local(hexaddr, v6):
        ip, port = hexaddr.split(":")
        raw = bytes.fromhex(ip)
        if v6:
            return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))), int(port, 16)
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)

    def sockets():
        """inode -> (protocol, address, port) of every listening TCP and bound UDP socket."""
        table = {}
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            with open(f"/proc/net/{proto}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if proto.startswith("tcp") and fields[3] != "0A":  # LISTEN
                        continue
                    table[fields[9]] = (proto, *local(fields[1], proto.endswith("6")))
        return table

    t0 = time.monotonic()
    from varmem.distributed import cluster
    import ray

    with cluster.connected(None):
        started_s = time.monotonic() - t0
        gcs = ray.get_runtime_context().gcs_address
        ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process
        table, found = sockets(), []
        for pid in tree(os.getpid()):
            try:
                name = open(f"/proc/{pid}/cmdline").read().split("\\0")[0]
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in table:
                    found.append([os.path.basename(name), *table[link[8:-1]]])
    print(json.dumps({"gcs": gcs, "started_s": started_s, "listening": found, "env_after": os.environ.get("RAY_ADDRESS")}))
''')


@pytest.mark.ray
@pytest.mark.slow
def test_a_private_cluster_listens_on_loopback_only_and_ignores_a_stale_address(stale_ray_tmpdir):
    ray_tmpdir, dead = stale_ray_tmpdir
    proc = run_isolated([sys.executable, "-c", LISTENING], clean_env(ray_tmpdir), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["gcs"].startswith("127.0.0.1:") and not report["gcs"].endswith(f":{dead}")  # its own cluster
    assert report["started_s"] < 120  # not ray.init()'s minutes of retries of the stale address
    listening = report["listening"]
    names = {name for name, *_ in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # not vacuous: the cluster's own servers were seen
    assert len(listening) >= 5, listening
    exposed = [entry for entry in listening if entry[2] not in LOOPBACK]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert report["env_after"] is None  # RAY_ADDRESS named the private cluster only while it ran


@pytest.mark.parametrize("command", ["train", "tune"])
def test_train_and_tune_connect_the_same_way(tiny_data, tmp_path, capsys, monkeypatch, command):
    """Without --address and RAY_ADDRESS both ask cluster.connect for no address (a private cluster, above);
    with one, for that one."""
    asked = []

    def record(address, **kwargs):
        asked.append(address)
        raise ConfigError("connect was called")

    monkeypatch.setattr(cluster, "connect", record)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    raw = tiny_raw(tiny_data, tmp_path / "run", train={"steps": 2, "val_every": 2, "threads": 1})
    config = write_config(tmp_path / "tiny.yaml", raw)
    argv = (["train", "--config", config, "--workers", "1"] if command == "train" else
            ["tune", "--config", config, "--space", SMOKE_SPACE, "--out", tmp_path / "search"])
    for extra in ([], ["--address", "auto"]):
        rc, _, err = run(argv + extra, capsys)
        assert rc == 2 and err == "varmem: error: connect was called\n", err
    assert asked == [None, "auto"]


# --- 16: another local Ray instance runs -------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_train_workers_2_beside_another_local_ray_instance(tiny_data, tmp_path, ray_session, stale_ray_tmpdir):
    """The test session's cluster is the other instance (as in the issue); the stale address file is item 6."""
    ray_tmpdir, dead = stale_ray_tmpdir
    raw = tiny_raw(tiny_data, tmp_path / "run", train={"steps": 4, "episodes_per_step": 1, "threads": 1,
                                                       "checkpoint_every": 4, "val_every": 4})
    config = write_config(tmp_path / "tiny.yaml", raw)
    proc = run_isolated([sys.executable, "-m", "varmem.distributed.train", "--config", str(config), "--workers", "2",
                         "--plugin", "tests.distributed.standin"], clean_env(ray_tmpdir), timeout=400)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "multiple active Ray instances" not in output, output[-4000:]
    assert "GetTimeoutError" not in output, output[-4000:]
    assert "cluster 127.0.0.1:" in proc.stdout and f":{dead} " not in proc.stdout
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["world_size"] == 2


# --- 16: scripts/ci_job_submit.sh retries a submit its job agent did not take ----------------------

FAKE_RAY = r'''#!/usr/bin/env bash
# `ray job ...` as a dashboard answers before its job agent is ready: the first $AGENTLESS_SUBMITS submits fail
n=$(cat "$STATE/submits" 2>/dev/null || echo 0)
case "$1 $2" in
    "job submit")
        echo $((n + 1)) > "$STATE/submits"
        if [ "$n" -lt "$AGENTLESS_SUBMITS" ]; then
            [ -z "$CREATED_ANYWAY" ] || touch "$STATE/created"
            echo "RuntimeError: Request failed with status code 500: No available agent to submit job, please try again later."
            exit 1
        fi
        [ -z "$JOB_FAILS" ] || { echo "Job 'x' failed"; exit 1; }
        echo "Job 'x' succeeded"; exit 0;;
    "job status")
        [ -f "$STATE/created" ] && { echo "Job '${@: -1}' succeeded"; exit 0; }
        echo "Job ${@: -1} does not exist"; exit 1;;
    "job logs") echo "the job's logs"; exit 0;;
esac
exit 3
'''


@pytest.mark.parametrize("env, rc, submits, says", [
    ({"AGENTLESS_SUBMITS": "2"}, 0, 3, "submitting again in 0 s"),  # the agent registers after two submits
    ({"AGENTLESS_SUBMITS": "99"}, 1, 3, "never took the job"),  # bounded: SUBMIT_ATTEMPTS=3
    ({"AGENTLESS_SUBMITS": "0", "JOB_FAILS": "1"}, 1, 1, "Job 'x' failed"),  # any other failure is not retried
    ({"AGENTLESS_SUBMITS": "1", "CREATED_ANYWAY": "1"}, 0, 1, "following it"),  # a late agent took it: not submitted twice
])
def test_ci_job_submit_retries_a_submit_no_agent_took(tmp_path, env, rc, submits, says):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ray").write_text(FAKE_RAY)
    (fake / "ray").chmod(0o755)
    (tmp_path / "state").mkdir()
    script = REPO / "scripts" / "ci_job_submit.sh"
    proc = subprocess.run(
        ["bash", "-c", f'source "{script}" && submit_job job_1 "{tmp_path}/submit.log" -- python -c pass'],
        env={**os.environ, "BIN": str(fake), "STATE": str(tmp_path / "state"), "SUBMIT_ATTEMPTS": "3",
             "SUBMIT_DELAY": "0", "ADDRESS": "http://127.0.0.1:1", **env},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert int((tmp_path / "state" / "submits").read_text()) == submits
    assert says in proc.stdout, proc.stdout
