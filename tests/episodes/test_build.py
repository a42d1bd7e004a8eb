"""Dataset directories: Arrow shards, manifest, atomic writes, verify, splits, bad input."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.ipc as ipc
import pytest

from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.splits import SplitPolicy
from tests.episodes.tiny import TinySource

PRE26 = Preprocessing.default(26)


def build(tmp_path, source=None, name="ds", **kw):
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return build_dataset(source or TinySource(), tmp_path / name, preprocessing=PRE26, **kw)


def test_manifest_and_shards_round_trip(tmp_path):
    m = build(tmp_path, shard_bytes=3 * 20 * 26 * 26)  # 3 classes per shard
    ds = Dataset.open(tmp_path / "ds")
    assert m["image_shape"] == [26, 26]
    assert set(m["splits"]) == {"background", "evaluation"}
    bg, ev = m["splits"]["background"], m["splits"]["evaluation"]
    assert (bg["classes"], bg["images"], ev["classes"], ev["images"]) == (8, 160, 4, 80)
    assert bg["class_range"] == [0, 8] and ev["class_range"] == [8, 12]
    assert [s["class_range"] for s in bg["shards"]] == [[0, 3], [3, 6], [6, 8]]
    assert m["alphabets"] == ["alpha0", "alpha1", "alpha2"]
    assert m["preprocessing"]["method"] == "maxpool" and m["split"] == {"policy": "release"}
    # plain pyarrow reads a shard: one row per image, sorted by class, images carry their class id
    with ipc.open_file(str(tmp_path / "ds" / bg["shards"][1]["file"])) as reader:
        t = reader.read_all()
    assert t.num_rows == 60 and t.column("class_id").to_pylist() == sorted(t.column("class_id").to_pylist())
    img = np.asarray(t.column("image")[0].as_py(), dtype=np.uint8).reshape(26, 26)
    assert img[0, 0] == 3 + 1  # TinySource marks class k with k+1 (class 3 = alpha0/character03)
    # memory-mapped split view agrees
    split = ds.split("background")
    assert split.num_classes == 8 and split.num_images == 160
    assert [int(split.class_images(c)[0, 0, 0]) for c in range(8)] == [k + 1 for k in range(8)]
    assert np.array_equal(split.class_images(5)[:, 0, 1], np.arange(1, 21))
    assert split.shards[0].images.base is not None  # a view into the mapped file, not a copy
    assert ds.verify() == []


def test_preprocessing_26_is_crop_and_maxpool_28_is_antialiased():
    raw = np.zeros((1, 105, 105), np.uint8)
    raw[0, 4, 9] = 255  # one ink pixel → block (1, 2)
    raw[0, 104, 50] = 255  # row 104 is cropped away
    out = Preprocessing.default(26).apply(raw)
    assert out.shape == (1, 26, 26) and out[0, 1, 2] == 255 and out.sum() == 255
    grey = Preprocessing.default(28).apply(np.full((1, 105, 105), 255, np.uint8))
    assert grey.shape == (1, 28, 28) and grey.min() >= 250
    thin = np.zeros((1, 105, 105), np.uint8)
    thin[0, :, 52] = 255  # a 1-px line becomes a grey line, not a full-ink one
    assert 0 < Preprocessing.default(28).apply(thin).max() < 255


def test_build_is_deterministic(tmp_path):
    a, b = build(tmp_path, name="a"), build(tmp_path, name="b", workers=2)
    sha = lambda m: [s["sha256"] for sp in m["splits"].values() for s in sp["shards"]]  # noqa: E731
    assert sha(a) == sha(b)


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path):
    with pytest.raises(DataError, match="tiny class 5"):
        build(tmp_path, TinySource(fail_at=5))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="manifest.json is missing|does not exist"):
        Dataset.open(tmp_path / "ds")


def test_existing_output_needs_overwrite_and_failed_overwrite_keeps_old(tmp_path):
    build(tmp_path)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        build(tmp_path)
    with pytest.raises(DataError):
        build(tmp_path, TinySource(fail_at=1), overwrite=True)
    assert Dataset.open(tmp_path / "ds").verify() == []  # the old dataset is intact
    build(tmp_path, TinySource(alphabets=2, evaluation=(1,)), overwrite=True)
    assert Dataset.open(tmp_path / "ds").info()["splits"]["background"]["classes"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_verify_detects_tampering_and_truncation(tmp_path):
    m = build(tmp_path, shard_bytes=4 * 20 * 26 * 26)
    ds = Dataset.open(tmp_path / "ds")
    shard = tmp_path / "ds" / m["splits"]["background"]["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = ds.verify()
    assert len(problems) == 1 and shard.name in problems[0] and "sha256" in problems[0]
    (tmp_path / "ds" / m["splits"]["evaluation"]["shards"][0]["file"]).unlink()
    assert any("missing" in p for p in ds.verify())


def test_manifest_schema_version_and_fields_checked(tmp_path):
    build(tmp_path)
    path = tmp_path / "ds" / "manifest.json"
    m = json.loads(path.read_text())
    m["schema_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest.json: schema_version 99 is not supported"):
        Dataset.open(tmp_path / "ds")
    m["schema_version"] = 1
    del m["splits"]["background"]["shards"][0]["sha256"]
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"splits.background.shards\[0\].sha256 is missing"):
        Dataset.open(tmp_path / "ds")
    path.write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        Dataset.open(tmp_path / "ds")


def test_row_count_mismatch_is_caught_on_open(tmp_path):
    build(tmp_path)
    path = tmp_path / "ds" / "manifest.json"
    m = json.loads(path.read_text())
    m["splits"]["background"]["shards"][0]["rows"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"splits.background.images is 160 but its shards' rows add up to 161"):
        Dataset.open(tmp_path / "ds")  # the manifest contradicts itself
    m["splits"]["background"]["images"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match="160 rows, the manifest says 161.*varmem data verify"):
        Dataset.open(tmp_path / "ds")  # the shard contradicts the manifest: its stamp no longer matches the entry
    with pytest.raises(DataError, match="has 160 rows, the manifest says 161"):
        Dataset.open(tmp_path / "ds", verify=False).split("background")


def test_split_policies_are_seeded_and_recorded(tmp_path):
    src = TinySource(alphabets=3, per_alphabet=10)
    m = build(tmp_path, src, name="alpha", split=SplitPolicy("alphabets", heldout_alphabets=("alpha1",)))
    ds = Dataset.open(tmp_path / "alpha")
    assert m["split"] == {"policy": "alphabets", "heldout_alphabets": ["alpha1"]}
    assert set(ds.split("test").class_alphabet.tolist()) == {1}
    assert set(ds.split("train").class_alphabet.tolist()) == {0, 2}

    p = SplitPolicy("characters", fraction=0.3, seed=7)
    recs = src.classes()
    s1, s2 = p.assign(recs), p.assign(recs)
    assert s1 == s2 and s1 != SplitPolicy("characters", fraction=0.3, seed=8).assign(recs)
    for a in range(3):  # 3 of 10 characters of every alphabet held out
        assert sum(1 for r, s in zip(recs, s1) if r.alphabet == f"alpha{a}" and s == "test") == 3
    # an alphabet's split does not depend on the other alphabets
    only_a0 = [r for r in recs if r.alphabet == "alpha0"]
    assert p.assign(only_a0) == [s for r, s in zip(recs, s1) if r.alphabet == "alpha0"]
    m = build(tmp_path, src, name="chars", split=p)
    assert m["split"] == {"policy": "characters", "fraction": 0.3, "seed": 7}
    assert m["splits"]["test"]["classes"] == 9


def test_bad_split_arguments(tmp_path):
    with pytest.raises(DataError, match="'Klingon' not in the source; alphabets are: alpha0, alpha1, alpha2"):
        build(tmp_path, split=SplitPolicy("alphabets", heldout_alphabets=("Klingon",)))
    with pytest.raises(DataError, match="--heldout-fraction must be in"):
        SplitPolicy("characters", fraction=1.5)
    with pytest.raises(DataError, match="needs at least one --heldout-alphabet"):
        SplitPolicy("alphabets")


def test_unknown_split_named_on_open(tmp_path):
    build(tmp_path)
    with pytest.raises(DataError, match="no split 'valid'; this dataset has 'background', 'evaluation'"):
        Dataset.open(tmp_path / "ds").split("valid")


def test_empty_class_is_an_error(tmp_path):
    with pytest.raises(DataError, match="alpha0/character01: no images"):
        build(tmp_path, TinySource(counts={1: 0}))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.ray
def test_ray_data_reads_the_shards(tmp_path, ray_session):
    from varmem.episodes.dataset import to_ray_dataset

    build(tmp_path)
    rds = to_ray_dataset(tmp_path / "ds", split="evaluation")
    assert rds.count() == 80
    assert sorted({r["class_id"] for r in rds.take_all()}) == [8, 9, 10, 11]


def test_build_and_verify_draw_a_bar_that_quiet_silences(tmp_path, monkeypatch, capsys):
    from varmem.cli import main

    monkeypatch.setenv("VARMEM_PROGRESS", "1")  # stderr is not a terminal under pytest: force the bar on
    build = ["data", "build", "--source", "strokes", "--classes", "6", "--images-per-class", "3", "--workers", "1"]
    assert main(build + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "building a:" in err and "/6 [" in err and "class/s" in err
    assert main(["data", "verify", str(tmp_path / "a")]) == 0
    assert "verifying" in capsys.readouterr().err
    assert main(build + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert main(["data", "verify", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("VARMEM_PROGRESS", "0")
    assert main(["data", "verify", str(tmp_path / "b")]) == 0
    assert "verifying" not in capsys.readouterr().err
