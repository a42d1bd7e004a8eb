"""Property: whatever a manifest says, `varmem data verify DIR` and `varmem data info DIR` succeed or
fail with one `varmem: error:` line (verify: exit 1 after its FAIL lines when shards do not match,
exit 2 when the manifest itself is wrong) — never a traceback, never a hang.

Hypothesis mutates a valid manifest at random: deletes fields, nulls them, swaps types (lists ↔
mappings, strings ↔ numbers), puts in extreme numbers, hostile paths (``/etc/passwd``, ``..``, ``.``,
``/dev/zero``) and huge or negative counts. Every example runs under a SIGALRM deadline.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varmem.cli import main
from varmem.episodes.build import build_dataset
from varmem.episodes.preprocess import Preprocessing
from tests.deadline import deadline
from tests.episodes.tiny import TinySource

EXAMPLE_SECONDS = 10  # a hang is anything longer (an example takes ~20 ms)

HOSTILE_PATHS = ["/etc/passwd", "/dev/zero", "..", ".", "", "/", "../background-00000.arrow", "a/../../b.arrow",
                 "background-00000.arrow/", "./background-00001.arrow", "nul\x00.arrow", "evaluation-00000.arrow",
                 "missing.arrow", "manifest.json", ".varmem-verified.json"]
EXTREMES = [0, -1, 1, 2, 7, 8, 13, 26, 52, 160, 10 ** 30, -10 ** 30, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 1.5, -0.0,
            math.inf, -math.inf, math.nan, True, False, None]
ODD_VALUES = ["", "abc", "26", "0" * 64, "f" * 64, "F" * 64, [], {}, [0], [0, 1], [1, 0], [0, 1, 2], [26, 26], [-1, 5],
              ["a", "b"], [[0, 1]], {"name": 1}, {"name": ""}, {"0": 1}, {"train": "background"}, {"train": ["x"]}]

RETYPED = [None, "abc", 7, -1, 10 ** 30, 1.5, True, [], {}, [0], {"a": 1}]  # one value of each JSON type
values = st.one_of(
    st.sampled_from(EXTREMES), st.sampled_from(HOSTILE_PATHS), st.sampled_from(ODD_VALUES),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.text(max_size=6),
    st.lists(st.integers(min_value=-3, max_value=300), max_size=3),
)


def paths_of(node, prefix=()):
    """Every (key, index) path below ``node``, parents before children."""
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return []
    out = []
    for key, child in items:
        out.append(prefix + (key,))
        out.extend(paths_of(child, prefix + (key,)))
    return out


def swapped(value):
    """A list as a mapping, a mapping as a list, a scalar wrapped in a list."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return [value]


@st.composite
def mutated_manifests(draw, manifest):
    m = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = paths_of(m)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        kind = draw(st.sampled_from(["delete", "null", "retype", "replace", "swap"]))
        if kind == "delete":
            del parent[key]
        elif kind == "null":
            parent[key] = None
        elif kind == "swap":
            parent[key] = swapped(parent[key])
        elif kind == "retype":
            parent[key] = copy.deepcopy(draw(st.sampled_from(RETYPED)))  # a fresh copy: a later mutation may edit it
        else:
            parent[key] = copy.deepcopy(draw(values))
    return m


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A valid dataset: background 2 shards (4 + 2 classes), evaluation 1 shard (3 classes), 4 images each."""
    root = tmp_path_factory.mktemp("valid")
    build_dataset(TinySource(alphabets=3, per_alphabet=3, n=4), root / "ds", preprocessing=Preprocessing.default(26),
                  progress=False, workers=1, shard_bytes=4 * 4 * 26 * 26)
    directory = root / "ds"
    return directory, json.loads((directory / "manifest.json").read_text())


def check_outcome(command: str, rc: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    if rc == 0:
        assert not any(line.startswith("varmem: error:") for line in lines), err
        return
    if command == "verify" and rc == 1:  # shards that do not match: a FAIL line each, then the one error line
        assert lines and all(line.startswith("FAIL ") for line in lines[:-1]), err
        assert lines[-1].startswith("varmem: error: ") and sum("varmem: error:" in line for line in lines) == 1, err
        return
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("varmem: error: "), err


@pytest.mark.timeout(180)
def test_random_manifests_give_success_or_one_error_line(valid, capsys):
    source, manifest = valid
    shards = sorted(p.name for p in source.glob("*.arrow"))
    seen = {"ok": 0, "error": 0}

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(mutated_manifests(manifest))
    def check(m):
        work = Path(tempfile.mkdtemp(prefix="manifest-"))
        try:
            directory = work / "ds"
            directory.mkdir()
            for name in shards:
                os.link(source / name, directory / name)  # the same shard files, no copy
            (directory / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
            capsys.readouterr()
            for argv in (["data", "verify", str(directory), "--quiet"], ["data", "info", str(directory), "--json"]):
                with deadline(EXAMPLE_SECONDS):
                    rc = main(argv)
                out, err = capsys.readouterr()
                check_outcome(argv[1], rc, err)
                seen["ok" if rc == 0 else "error"] += 1
        finally:
            shutil.rmtree(work, ignore_errors=True)

    check()
    assert seen["error"] > 100 and seen["ok"] > 10, seen  # the mutations reach the checks, and some pass them


def test_the_unmutated_manifest_passes(valid, capsys):
    directory, _ = valid
    assert main(["data", "verify", str(directory), "--quiet"]) == 0
    assert main(["data", "info", str(directory)]) == 0
