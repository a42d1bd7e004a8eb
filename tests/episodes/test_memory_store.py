"""varmem.episodes.memory_store: build (chunked, atomic), read back (memory-mapped), verify, refuse.

The encoder here is a fixed random projection of the pixels (no model): the store's own machinery is
under test; tests/distributed/test_scale.py builds stores through a trained VMA.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from varmem.distributed.peak_memory import PeakMemory, reset_peak
from varmem.episodes.build import build_dataset
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.memory_store import (
    MemoryStore,
    StoreSource,
    build_memory_store,
    class_order,
    gather_images,
    read_store_manifest,
)
from varmem.episodes.preprocess import Preprocessing
from tests.episodes.tiny import TinySource

WIDTH = 8
MODEL = {"fingerprint": "f" * 64, "similarity": "normalized_dot", "run_dir": "runs/x", "step": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    """Background split: 20 classes (alphabets 0, 1) of 6 images; class id and item readable in pixels (0, 0), (0, 1)."""
    out = tmp_path_factory.mktemp("store-data") / "tiny26"
    build_dataset(TinySource(alphabets=3, per_alphabet=10, n=6, evaluation=(2,)), out,
                  preprocessing=Preprocessing.default(26), progress=False, workers=1)
    return Dataset.open(out)


def _projection(width: int = WIDTH, pixels: int = 26 * 26):
    w = np.random.default_rng(0).standard_normal((pixels, width)).astype(np.float32)

    def encode(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) / 255.0) @ w

    return encode


def _source(data: Dataset, split: str = "background") -> StoreSource:
    return StoreSource(data.split(split), data.directory, data.manifest, split)


def _build(data, out, **kw):
    options = dict(encode=_projection(), key_width=WIDTH, model=MODEL, per_class=4, key_dtype="float32",
                   shard_entries=8, batch=5, progress=False)
    options.update(kw)
    return build_memory_store(_source(data), out, **options)


def test_entries_are_class_major_and_point_at_their_images(data, tmp_path):
    manifest = _build(data, tmp_path / "s", classes=7, seed=3)
    assert manifest["entries"] == 28 and [s["rows"] for s in manifest["shards"]] == [8, 8, 8, 4]
    store = MemoryStore.open(tmp_path / "s")
    split = data.split("background")
    labels, items = store.column("label"), store.column("item")
    assert labels.tolist() == [j for j in range(7) for _ in range(4)] and items.tolist() == [0, 1, 2, 3] * 7
    # the store's class order is the seeded permutation, and its source rows hold those classes' items 0..3
    order = class_order(split.num_classes, 3)[:7]
    assert (store.column("class_id") == np.repeat(order + split.class_range[0], 4)).all()
    images = gather_images(split, store.column("source_shard"), store.column("source_row"))
    assert (images[:, 0, 0] == (store.column("class_id") % 255 + 1)).all()  # TinySource: block (0, 0) = class id + 1
    assert (images[:, 0, 1] == items + 1).all()  # block (0, 1) = item + 1
    keys = np.concatenate([k.numpy() for _, k in store.key_tensors()])
    np.testing.assert_allclose(keys, _projection()(images), rtol=1e-5, atol=1e-4)  # the encoder's (batched: rounding)
    # a prefix of C·k entries is a memory of the first C classes; keys_at and lookup agree with the columns
    assert sum(len(k) for _, k in store.key_tensors(limit=12)) == 12
    np.testing.assert_array_equal(store.keys_at(np.array([27, 0, 9])), keys[[27, 0, 9]])
    info = store.lookup(np.array([[5, -1]]))
    assert info["label"].tolist() == [[1, -1]] and info["item"].tolist() == [[1, -1]]


def test_float16_keys_are_rounded_keys(data, tmp_path):
    _build(data, tmp_path / "s", classes=3, key_dtype="float16")
    store = MemoryStore.open(tmp_path / "s")
    keys = np.concatenate([k.numpy() for _, k in store.key_tensors()])
    assert keys.dtype == np.float16 and store.key_bytes == 2 * WIDTH
    images = gather_images(data.split("background"), store.column("source_shard"), store.column("source_row"))
    np.testing.assert_allclose(keys.astype(np.float32), _projection()(images).astype(np.float16).astype(np.float32), rtol=2e-3, atol=1e-2)


def test_a_failed_build_leaves_nothing(data, tmp_path):
    calls = {"n": 0}

    def failing(images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("encoder failed")
        return _projection()(images)

    with pytest.raises(RuntimeError, match="encoder failed"):
        _build(data, tmp_path / "s", classes=10, encode=failing)
    assert list(tmp_path.iterdir()) == []  # no store, no .s.building-* folder


def test_build_refuses_bad_requests(data, tmp_path):
    with pytest.raises(DataError, match=r"--classes 21: split 'background' of .* holds 20 classes"):
        _build(data, tmp_path / "a", classes=21)
    with pytest.raises(DataError, match=r"--per-class 7: class \d+ of split 'background' .* has 6 images"):
        _build(data, tmp_path / "b", classes=2, per_class=7)
    _build(data, tmp_path / "c", classes=2)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        _build(data, tmp_path / "c", classes=2)
    with pytest.raises(DataError, match=r"keys of shape \(5, 3\), expected \(5, 8\)"):
        _build(data, tmp_path / "d", classes=2, encode=lambda im: np.zeros((len(im), 3), np.float32))
    with pytest.raises(DataError, match="non-finite key"):
        _build(data, tmp_path / "e", classes=2, encode=lambda im: np.full((len(im), WIDTH), np.nan, np.float32))


def test_verify_finds_a_corrupt_shard_and_open_refuses_it(data, tmp_path):
    _build(data, tmp_path / "s", classes=5)
    store = MemoryStore.open(tmp_path / "s")
    assert store.verify() == []
    path = tmp_path / "s" / "keys-00001.arrow"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    problems = MemoryStore(store.directory, store.manifest).verify()
    assert len(problems) == 1 and "keys-00001.arrow: sha256" in problems[0]
    with pytest.raises(DataError, match=r"keys-00001.arrow: sha256 .* does not match the manifest"):
        MemoryStore.open(tmp_path / "s")


def test_manifest_problems_name_the_field(data, tmp_path):
    _build(data, tmp_path / "s", classes=3)
    mpath = tmp_path / "s" / "manifest.json"
    good = json.loads(mpath.read_text())
    for change, match in [
        (lambda m: m.update(entries=13), r"entries is 13 but classes × per_class = 3 × 4 = 12"),
        (lambda m: m.update(key_dtype="int8"), r"field 'key_dtype' is 'int8'"),
        (lambda m: m["shards"][1].update(entry_range=[9, 17]), r"shards\[1\].entry_range is \[9, 17\]"),
        (lambda m: m["shards"][0].update(file="../x.arrow"), r"shards\[0\].file is '../x.arrow', a path with '..'"),
        (lambda m: m.update(schema="varmem.dataset"), r"a dataset directory, not a memory store"),
    ]:
        bad = json.loads(json.dumps(good))
        change(bad)
        mpath.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=match):
            read_store_manifest(tmp_path / "s")
    with pytest.raises(DataError, match="is not a memory store: manifest.json is missing"):
        read_store_manifest(tmp_path)


def test_another_model_or_dataset_is_refused(data, tmp_path):
    _build(data, tmp_path / "s", classes=3)
    store = MemoryStore.open(tmp_path / "s")
    store.check_model(MODEL["fingerprint"], WIDTH, "normalized_dot", "this run")  # its own model: fine
    with pytest.raises(DataError, match=r"manifest.json: key_width is 8 but run B has keys of width 16"):
        store.check_model(MODEL["fingerprint"], 16, "normalized_dot", "run B")
    with pytest.raises(DataError, match=r"manifest.json: model.fingerprint ffffffffffff… \(run runs/x, step 1\) is not run C's 0123456789ab…"):
        store.check_model("0123456789ab" + "0" * 52, WIDTH, "normalized_dot", "run C")
    store.check_dataset(data.directory, data.manifest, "background")
    with pytest.raises(DataError, match=r"dataset.split is 'background', not 'evaluation'"):
        store.check_dataset(data.directory, data.manifest, "evaluation")
    other = json.loads(json.dumps(data.manifest))
    other["splits"]["background"]["shards"][0]["sha256"] = "0" * 64
    with pytest.raises(DataError, match=r"dataset.fingerprint .* does not match .*: the store's entries point into another dataset"):
        store.check_dataset(data.directory, other, "background")


# --- chunked: the keys are never all in RAM ---------------------------------------------------------


@dataclass
class _Shard:
    images: np.ndarray


@dataclass
class _FakeSplit:
    """A split of ``classes`` classes of 2 images of 2×2 pixels (the store reads only these fields)."""

    classes: int

    def __post_init__(self):
        self.image_shape = (2, 2)
        self.class_range = (0, self.classes)
        self.class_count = np.full(self.classes, 2)
        self.class_shard = np.zeros(self.classes, np.int32)
        self.class_start = np.arange(self.classes, dtype=np.int64) * 2
        rng = np.random.default_rng(0)
        self.shards = [_Shard(rng.integers(0, 255, (2 * self.classes, 2, 2), dtype=np.uint8))]

    @property
    def num_classes(self):
        return self.classes


def test_building_holds_one_shard_of_keys_not_all_of_them(tmp_path):
    """100,000 entries × 256 float32 = 102 MB of keys, written in 4,096-entry shards (4 MB): the build's
    peak RSS grows by far less than the keys (the page cache holds the written files, not the process)."""
    if not reset_peak():
        pytest.skip("no /proc/self/clear_refs here")
    split = _FakeSplit(50_000)
    manifest = {"image_shape": [2, 2], "splits": {"all": {"shards": [{"file": "x", "sha256": "0" * 64, "rows": 100_000}]}}}
    w = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    encode = lambda images: images.reshape(len(images), 4).astype(np.float32) @ w  # noqa: E731
    with PeakMemory() as peak:
        m = build_memory_store(StoreSource(split, tmp_path, manifest, "all"), tmp_path / "big", encode=encode, key_width=256,
                               model=MODEL, per_class=2, key_dtype="float32", shard_entries=4096, batch=1024, progress=False)
    total = m["entries"] * 256 * 4
    assert m["entries"] == 100_000 and len(m["shards"]) == 25
    assert peak.rss_extra_bytes < total / 3, (peak.rss_extra_bytes, total)
    store = MemoryStore.open(tmp_path / "big")
    row = store.lookup(np.array([99_999]))["source_row"]
    np.testing.assert_allclose(store.keys_at(np.array([99_999])), encode(split.shards[0].images[row]), rtol=1e-5, atol=1e-3)
