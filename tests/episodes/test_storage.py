"""Datasets on object storage: a real S3-compatible server (moto in server mode, tests/s3server.py) on 127.0.0.1.

Build to s3:// (published atomically), info / verify / show on the URI, opening and sampling through the
per-node shard cache (one download per node, corrupt and partial entries fetched again, the size limit), a
shard corrupted on the server refused by name, a server that goes away mid-fetch leaving no cache entry,
and no test credential in anything varmem wrote or printed.
"""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.episodes.tiny import TinySource
from tests.s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY, CutProxy, environment, s3_fixture
from varmem.episodes import storage
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.shard_cache import ShardCache
from varmem.episodes.spec import EpisodeSpec
from varmem.episodes.storage import StorageError

s3 = s3_fixture("module")
ROOT = Path(__file__).resolve().parents[2]


def build(uri_or_path, **kw):
    return build_dataset(TinySource(alphabets=3, per_alphabet=6, n=10), uri_or_path, preprocessing=Preprocessing.default(26),
                         progress=False, workers=1, **kw)


@pytest.fixture(scope="module")
def remote(s3, tmp_path_factory):
    """The tiny dataset built locally and on the server: (local path, URI)."""
    local = tmp_path_factory.mktemp("local") / "tiny"
    build(local)
    build(s3.uri("data/tiny"))
    return local, s3.uri("data/tiny")


def test_uri_parsing_and_pathlib_mangled_uris(s3):
    assert storage.normalize(Path("s3://bucket/a/b")) == "s3://bucket/a/b"  # pathlib prints s3:/bucket/a/b
    assert storage.normalize(Path("file:///tmp/x")) == "file:///tmp/x"
    assert storage.is_remote("s3://b/x") and storage.is_remote("gs://b/x") and storage.is_remote("hdfs://nn:8020/x")
    assert not storage.is_remote("file:///tmp/x") and not storage.is_remote("data/s3:/x") and not storage.is_remote("C:/x")
    loc = storage.location("s3://varmem-test/a/b/")
    assert (loc.path, loc.uri, loc.name, loc.parent.uri) == ("varmem-test/a/b", "s3://varmem-test/a/b", "b", "s3://varmem-test/a")
    assert storage.location("file:///tmp/x").is_local and storage.location("file:///tmp/x").path == "/tmp/x"
    with pytest.raises(StorageError, match="secret_key"):
        storage.location("s3://varmem-test/x?endpoint_override=127.0.0.1:1&secret_key=abc")
    with pytest.raises(StorageError, match="credentials"):
        storage.check_endpoint("http://user:pw@127.0.0.1:9000")
    with pytest.raises(StorageError, match="expected http"):
        storage.check_endpoint("ftp://127.0.0.1")


def test_remote_dataset_matches_the_local_build(remote, tmp_path):
    local, uri = remote
    cache = ShardCache(tmp_path / "cache")
    here, there = Dataset.open(local), Dataset.open(uri, cache=cache)
    assert str(there.directory) == uri and there.remote and there.directory.name == "tiny"
    assert there.info()["splits"] == here.info()["splits"] and there.info()["directory"] == uri
    assert cache.stats.downloads == 0  # opening reads the manifest only
    spec = EpisodeSpec(split="train", ways=3, shots=2, targets=2)
    a, b = EpisodeSampler(here, spec, seed=3).episode(5), EpisodeSampler(there, spec, seed=3).episode(5)
    assert np.array_equal(a.memory.numpy(), b.memory.numpy()) and np.array_equal(a.targets.numpy(), b.targets.numpy())
    assert cache.stats.downloads == 1  # only the train split's shard: the eval split was not used
    shard = there.split("train").shards[0]
    assert shard.path.parent.parent == cache.root / "sha256" and shard.path.stem == \
        there.manifest["splits"]["background"]["shards"][0]["sha256"]


def test_the_published_dataset_appears_whole(s3, tmp_path):
    """The manifest is the last object to appear at the target; nothing stays under the temporary prefix;
    a second build without --overwrite is refused; --overwrite replaces it and removes the old shards."""
    uri = s3.uri("data/atomic")
    with pytest.raises(DataError, match="is not a varmem dataset: manifest.json is missing"):
        Dataset.open(uri)
    seen_before_manifest = []
    from varmem.episodes import storage as st

    real_copy = st.Location.copy_to

    def watch(self, target):  # every server-side copy into place: the manifest must come last
        seen_before_manifest.append((target.name, "manifest.json" in {k.rsplit("/", 1)[-1] for k in s3.objects("data/atomic")}))
        return real_copy(self, target)

    st.Location.copy_to = watch
    try:
        build(uri)
    finally:
        st.Location.copy_to = real_copy
    assert seen_before_manifest[-1][0] == "manifest.json" and not any(present for _, present in seen_before_manifest)
    assert sorted(s3.objects("data/atomic")) == ["data/atomic/background-00000.arrow", "data/atomic/evaluation-00000.arrow",
                                                 "data/atomic/manifest.json"]
    assert not [k for k in s3.objects("data") if ".atomic.building-" in k]
    with pytest.raises(DataError, match="already holds a dataset; pass --overwrite"):
        build(uri)
    s3.write("data/atomic/background-99999.arrow", b"left over from an older build")
    build(uri, overwrite=True)
    assert "data/atomic/background-99999.arrow" not in s3.objects("data/atomic")
    Dataset.open(uri, cache=ShardCache(tmp_path / "c")).split("eval")


def test_cli_build_info_verify_show_on_a_uri(s3, tmp_path):
    env = {"PATH": "", **s3.env}
    run = lambda *args: subprocess.run([sys.executable, "-m", "varmem", *args], cwd=ROOT, capture_output=True, text=True,
                                       env={**__import__("os").environ, **env, "VARMEM_CACHE_DIR": str(tmp_path / "cache")})
    uri = s3.uri("data/cli")
    built = run("data", "build", "--source", "strokes", "--classes", "16", "--alphabets", "4", "--images-per-class", "4", "--quiet",
                "--out", uri)
    assert built.returncode == 0, built.stderr
    assert f"{uri}: strokes (classes)" in built.stdout
    info = run("data", "info", uri, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["directory"] == uri
    ok = run("data", "verify", uri, "--quiet")
    assert ok.returncode == 0 and "ok: 2 shards match" in ok.stdout, ok.stderr
    shown = run("data", "show", uri, "--out", str(tmp_path / "grid.png"), "--classes", "3", "--per-class", "3")
    assert shown.returncode == 0 and (tmp_path / "grid.png").stat().st_size > 100, shown.stderr
    key = next(k for k in s3.objects("data/cli") if k.endswith("-00000.arrow") and "evaluation" in k)
    data = bytearray(s3.read(key))
    data[len(data) // 2] ^= 0xFF
    s3.write(key, bytes(data))
    bad = run("data", "verify", uri, "--quiet")
    assert bad.returncode == 1 and f"s3://varmem-test/{key}" in bad.stderr and "sha256" in bad.stderr
    everything = "".join(p.stdout + p.stderr for p in (built, info, ok, shown, bad))
    assert TEST_SECRET_KEY not in everything and TEST_ACCESS_KEY not in everything


def test_a_shard_corrupted_on_the_server_is_refused_by_name(s3, tmp_path):
    uri = s3.uri("data/corrupt")
    build(uri)
    key = "data/corrupt/background-00000.arrow"
    data = bytearray(s3.read(key))
    data[-100] ^= 0x01  # same size, one bit
    s3.write(key, bytes(data))
    cache = ShardCache(tmp_path / "cache")
    ds = Dataset.open(uri, cache=cache)
    with pytest.raises(DataError, match=rf"shard s3://varmem-test/{key}: sha256 .* does not match the manifest"):
        ds.split("train")
    assert cache.entries() == [] and not list((cache.root / "partial").glob("*"))


def test_a_damaged_cache_entry_is_fetched_again(remote, tmp_path):
    _, uri = remote
    cache = ShardCache(tmp_path / "cache")
    entry = Dataset.open(uri, cache=cache).split("train").shards[0].path
    assert cache.stats.downloads == 1
    with open(entry, "r+b") as f:  # a byte flipped in the entry after it was verified (same size)
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    fresh = ShardCache(tmp_path / "cache")
    Dataset.open(uri, cache=fresh).split("train")
    assert fresh.stats.downloads == 1 and fresh.stats.refetched == [str(entry)]
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    again = ShardCache(tmp_path / "cache")
    Dataset.open(uri, cache=again).split("train")
    assert again.stats.downloads == 1 and again.stats.refetched == [str(entry)]
    (tmp_path / "cache" / "partial" / f"{entry.stem}.123-abc.part").write_bytes(b"half")  # a killed download's
    last = ShardCache(tmp_path / "cache")
    Dataset.open(uri, cache=last).split("train")
    assert last.stats.downloads == 0 and last.stats.hits == 1


def _fetch_in_process(args) -> tuple[int, int]:
    uri, root, env = args
    import os

    os.environ.update(env)
    cache = ShardCache(root)
    Dataset.open(uri, cache=cache).split("train")
    Dataset.open(uri, cache=cache).split("eval")
    return cache.stats.downloads, os.getpid()


def test_one_download_per_node(remote, s3, tmp_path):
    """Four processes open the dataset at once with one cache folder: each shard is downloaded once."""
    _, uri = remote
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_fetch_in_process, [(uri, str(tmp_path / "cache"), s3.env)] * 4)
    assert sum(downloads for downloads, _ in results) == 2  # two shards, once each, whoever fetched them
    assert len({pid for _, pid in results}) >= 2
    assert len(ShardCache(tmp_path / "cache").entries()) == 2


def test_size_limit_evicts_least_recently_used(remote, tmp_path):
    _, uri = remote
    sizes = {k: v["shards"][0]["bytes"] for k, v in Dataset.open(uri).manifest["splits"].items()}
    first = ShardCache(tmp_path / "cache", max_bytes=sizes["background"] + sizes["evaluation"] - 1)
    Dataset.open(uri, cache=first).split("train")
    other = ShardCache(tmp_path / "cache", max_bytes=first.max_bytes)  # another process: the train shard is not its
    Dataset.open(uri, cache=other).split("eval")
    kept = [p.stem for p, _ in other.entries()]
    assert kept == [Dataset.open(uri).manifest["splits"]["evaluation"]["shards"][0]["sha256"]]
    assert other.size() <= other.max_bytes


def test_the_server_going_away_mid_fetch(remote, s3, tmp_path):
    """Every connection cut after 64 kB of a shard's body: a clear error naming the shard, no cache entry,
    no partial file; the next open, with the server back, fetches it."""
    _, uri = remote
    proxy = CutProxy(s3.port, cut_after=64 << 10, min_response=80 << 10)
    try:
        storage._filesystems.clear()
        with environment({"AWS_ENDPOINT_URL": proxy.endpoint}):
            cache = ShardCache(tmp_path / "cache")
            ds = Dataset.open(uri, cache=cache)  # the manifest is small: it passes
            with pytest.raises(StorageError, match=r"fetching shard s3://varmem-test/data/tiny/background-00000\.arrow "
                                                   r"into the cache .*: .*nothing was cached"):
                ds.split("train")
        assert proxy.cuts >= 1
        assert cache.entries() == [] and not list((cache.root / "partial").glob("*"))
    finally:
        proxy.close()
        storage._filesystems.clear()
    Dataset.open(uri, cache=ShardCache(tmp_path / "cache")).split("train")


def test_a_server_that_is_not_there(tmp_path):
    storage._filesystems.clear()
    with environment({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
                      "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY, "AWS_REGION": "us-east-1"}):
        with pytest.raises(StorageError, match=r"s3://varmem-test/nowhere/manifest.json: cannot reach it") as err:
            Dataset.open("s3://varmem-test/nowhere")
    storage._filesystems.clear()
    assert TEST_SECRET_KEY not in str(err.value)


def test_a_killed_remote_builds_prefix_is_removed_by_the_next_build(s3, capsys, monkeypatch):
    """A publish killed part-way leaves ``.NAME.building-*``; the next build of NAME removes it when its
    builder is gone (a dead pid on this host; on another host, nothing written there for an hour) and
    leaves a live build's alone."""
    import os
    import socket

    import varmem.episodes.build as build_module

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    me = build_module.builder_record()
    records = {
        f".again.building-{dead_pid}-aaaaaa": dict(me, pid=dead_pid, start=None),  # killed, this host
        f".again.building-{os.getpid()}-bbbbbb": me,  # alive: this process
        ".again.building-1-cccccc": dict(me, host=socket.gethostname() + "-elsewhere"),  # another host, just written
        ".again-other.building-1-dddddd": dict(me, pid=dead_pid, start=None),  # another dataset's
    }
    for name, record in records.items():
        s3.write(f"data/{name}/.builder.json", json.dumps(record).encode())
        s3.write(f"data/{name}/shards/part.arrow", b"half a shard")
    build(s3.uri("data/again"))
    err = capsys.readouterr().err
    left = {key.split("/")[1] for key in s3.objects("data") if key.split("/")[1].startswith(".again")}
    assert left == {f".again.building-{os.getpid()}-bbbbbb", ".again.building-1-cccccc", ".again-other.building-1-dddddd"}
    assert f"removed {s3.uri('data')}/.again.building-{dead_pid}-aaaaaa, left by a killed build (pid {dead_pid} on " in err
    assert Dataset.open(s3.uri("data/again")).manifest["splits"]  # the build itself went on

    monkeypatch.setattr(build_module, "LEGACY_STALE_AFTER_S", 0.0)  # another host's prefix, silent long enough
    build(s3.uri("data/again"), overwrite=True)
    left = {key.split("/")[1] for key in s3.objects("data") if key.split("/")[1].startswith(".again")}
    assert left == {f".again.building-{os.getpid()}-bbbbbb", ".again-other.building-1-dddddd"}
    assert (f"removed {s3.uri('data')}/.again.building-1-cccccc, left by a killed build (pid {os.getpid()} on "
            f"{socket.gethostname()}-elsewhere wrote nothing there for 0.0 h)") in capsys.readouterr().err
