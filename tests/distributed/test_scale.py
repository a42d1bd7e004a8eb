"""`varmem memory build|verify|info` and `varmem scale` with a tiny trained VMA: results, estimator, refusals.

A tiny MLP VMA (match_dim 8) trained for 2 steps on TinySource classes; the scaling data: 20 evaluation
classes of 5 images (4 in memory, 1 target). Ray is not used here (tests/distributed/test_scale_shards.py).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from varmem.cli import main
from varmem.distributed.run import load_run
from varmem.distributed.scale import RunView, ScaleOptions, build_store, run_scale
from varmem.episodes.build import build_dataset
from varmem.episodes.memory_store import MemoryStore
from varmem.episodes.preprocess import Preprocessing
from varmem.models.base import Batch
from tests.episodes.tiny import TinySource


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def scale_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale-data") / "tiny26"
    build_dataset(TinySource(alphabets=2, per_alphabet=20, n=5, evaluation=(1,)), out,
                  preprocessing=Preprocessing.default(26), progress=False, workers=1)
    return out


def _train(data: Path, out: Path, seed: int = 0, match_dim: int = 8, family: str = "vma") -> Path:
    model = {"name": family, "architecture": "mlp", "mlp_hidden": [32, 16], "z_dim": 4, "match_dim": match_dim, "hidden": 16}
    if family == "soft_attention":
        model["read_dim"] = 8
    raw = {
        "data": {"dir": str(data), "image_size": 26, "train_split": "background", "eval_split": "evaluation"},
        "episode": {"train": {"ways": 3, "shots": 2, "targets": 2}, "eval": {"ways": 3, "shots": 2, "targets": 2}},
        "model": model,
        "optim": {"lr": 1e-3},
        "train": {"steps": 2, "seed": seed, "num_samples": 2, "log_every": 1, "val_every": 0, "val_episodes": 1,
                  "val_samples": 2, "checkpoint_every": 2, "threads": 1, "device": "cpu"},
        "run": {"out": str(out)},
    }
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def vma_run(scale_data, tmp_path_factory) -> Path:
    return _train(scale_data, tmp_path_factory.mktemp("scale-run") / "vma")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_memory_build_verify_info(vma_run, scale_data, tmp_path, capsys):
    store = tmp_path / "store"
    rc, out, err = _run(["memory", "build", vma_run, "--data", scale_data, "--classes", 10, "--per-class", 4,
                         "--dtype", "float32", "--out", store, "--quiet"], capsys)
    assert rc == 0, err
    assert "40 entries = 10 classes × 4; keys float32 × 8" in out
    # the keys are the run's e_a = h(m_a) of the entries' images
    run = load_run(vma_run, data=scale_data)
    s = MemoryStore.open(store)
    view = RunView.of(run)
    from varmem.distributed.scale import _entry_images

    images = _entry_images(view, s, run.dataset.split("evaluation"), np.arange(40))
    with torch.no_grad():
        keys = run.model.encode_memory(images.unsqueeze(0)).keys[0].numpy()
    np.testing.assert_allclose(s.keys_at(np.arange(40)), keys, rtol=1e-5, atol=1e-5)
    assert s.manifest["model"]["fingerprint"] == view.fingerprint()
    rc, out, _ = _run(["memory", "verify", store, "--quiet"], capsys)
    assert rc == 0 and "ok: 1 shards match the manifest" in out
    rc, out, _ = _run(["memory", "info", store, "--json"], capsys)
    assert rc == 0 and json.loads(out)["entries"] == 40
    # a corrupt shard: verify says which (status 1), scale refuses the store in one line (status 2)
    shard = store / "keys-00000.arrow"
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0x55
    shard.write_bytes(bytes(raw))
    rc, _, err = _run(["memory", "verify", store, "--quiet"], capsys)
    assert rc == 1 and "FAIL" in err and "keys-00000.arrow: sha256" in err
    rc, _, err = _run(["scale", vma_run, "--data", scale_data, "--store", store, "--memory-sizes", 8, "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "keys-00000.arrow" in err and err.startswith("varmem: error:")


def test_scale_end_to_end(vma_run, scale_data, tmp_path, capsys):
    out = tmp_path / "scale"
    rc, o, err = _run(["scale", vma_run, "--data", scale_data, "--memory-sizes", "8,40,80", "--samples", 6, "--targets", 2,
                       "--out", out, "--json"], capsys)
    assert rc == 0, err
    result = json.loads(o)
    assert "building a memory store of 80 entries (20 classes × 4)" in err and "|M|" in err  # the cost table first
    rows = result["rows"]
    assert [r["memory_size"] for r in rows] == [8, 40, 80] and result["targets"] == 2
    own = np.array(result["own_class_nll_per_target"])
    for r in rows:
        assert r["classes"] == r["memory_size"] // 4
        assert math.isclose(r["optimum"], float((own + math.log(r["classes"])).mean()), rel_tol=1e-9)
        assert math.isclose(r["gap"], r["nll"] - r["optimum"], abs_tol=1e-9)
        assert math.isclose(r["nll_minus_own"], r["gap"] + math.log(r["classes"]), abs_tol=1e-9)
        assert r["kl_address"] >= -1e-4 and math.isclose(r["log_memory_size"], math.log(r["memory_size"]))
        assert 0.0 <= r["top1_accuracy"] <= 1.0 and 0.0 <= r["sample_accuracy"] <= 1.0
        assert r["key_bytes_per_batch"] == r["memory_size"] * 8 * 2  # float16 keys, d = 8
        assert r["s_per_batch"] >= r["address_s_per_batch"] > 0
    with (out / "scale.csv").open() as f:
        assert [int(r["memory_size"]) for r in csv.DictReader(f)] == [8, 40, 80]
    for name in ("scale_gap.png", "scale_kl.png", "scale_cost.png"):
        assert (out / name).stat().st_size > 1000
    # the store is reused by a second study on it
    rc, o, err = _run(["scale", vma_run, "--data", scale_data, "--memory-sizes", "8", "--samples", 2, "--out", out], capsys)
    assert rc == 0 and "reusing the memory store" in err


def test_scale_bound_is_the_models_own_likelihood(vma_run, scale_data, tmp_path):
    """The study's NLL at |M| (K samples over a store) estimates the model's log p(x | M) with M as an episode:
    both with K = 1,000 samples agree within Monte Carlo noise — on average over the targets to 0.5 nats, where
    a wrong weight (log p(a) − log q(a|x) left out) would be off by ~log |M| = 3.2 — and the address KL
    equals the dense one."""
    run = load_run(vma_run, data=scale_data)
    view = RunView.of(run)
    build_store(view, run.dataset, "evaluation", tmp_path / "s", classes=6, per_class=4, seed=0, key_dtype="float32",
                progress=False)
    store = MemoryStore.open(tmp_path / "s")
    result = run_scale(view, run.dataset, "evaluation", store, ScaleOptions(sizes=[24], targets=6, samples=1000, progress=False),
                       say=lambda line: None)
    row = result["rows"][0]
    from varmem.distributed.scale import _entry_images, _targets

    split = run.dataset.split("evaluation")
    memory = _entry_images(view, store, split, np.arange(24)).unsqueeze(0)  # [1, 24, 1, H, W]
    targets = _targets(view, store, split, 6).images.unsqueeze(0)  # [1, 6, 1, H, W]
    torch.manual_seed(0)
    ll = run.model.log_likelihood(Batch(memory, targets), 1000, chunk=250)[0]  # [6]
    dense_nll = -ll.double().numpy()
    ours = np.array(row["nll_per_target"])
    assert abs((ours - dense_nll).mean()) < 0.5 and np.abs(ours - dense_nll).max() < 3.0, (ours, dense_nll)
    with torch.no_grad():
        mem = run.model.encode_memory(memory)
        tgt = run.model.encode_targets(targets)
        kl = run.model.sample_addresses(mem, tgt, 2).kl[0].double().numpy()
    assert abs(row["kl_address"] - kl.mean()) < 1e-4


def test_bad_input_is_one_line(vma_run, scale_data, tmp_path, capsys):
    cases = [
        (["--memory-sizes", "84"], "--memory-sizes 84: split 'evaluation' of"),  # 21 classes × 4 > 20 × 4
        (["--memory-sizes", "10"], "--memory-sizes 10: a memory of C classes × 4 examples"),
        (["--memory-sizes", "8", "--targets", "0"], "--targets must be ≥ 1, got 0"),
    ]
    for extra, message in cases:
        rc, _, err = _run(["scale", vma_run, "--data", scale_data, "--out", tmp_path / "o", "--quiet", *extra], capsys)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "memory-store").exists()  # refused before anything was encoded


def test_a_store_of_another_run_is_refused(vma_run, scale_data, tmp_path, capsys):
    store = tmp_path / "store"
    assert _run(["memory", "build", vma_run, "--data", scale_data, "--classes", 4, "--out", store, "--quiet"], capsys)[0] == 0
    other_seed = _train(scale_data, tmp_path / "other-seed", seed=1)
    rc, _, err = _run(["scale", other_seed, "--data", scale_data, "--store", store, "--memory-sizes", 8, "--quiet"], capsys)
    assert rc == 2 and "manifest.json: model.fingerprint" in err and "is not" in err and "other-seed" in err
    wider = _train(scale_data, tmp_path / "wider", match_dim=12)
    rc, _, err = _run(["scale", wider, "--data", scale_data, "--store", store, "--memory-sizes", 8, "--quiet"], capsys)
    assert rc == 2 and "key_width is 8 but" in err and "has keys of width 12" in err


def test_soft_attention_reads_the_same_memories_densely_while_they_fit(vma_run, scale_data, tmp_path, capsys):
    store = tmp_path / "store"
    assert _run(["memory", "build", vma_run, "--data", scale_data, "--classes", 20, "--out", store, "--quiet"], capsys)[0] == 0
    soft = _train(scale_data, tmp_path / "soft", family="soft_attention")
    rc, _, err = _run(["scale", soft, "--data", scale_data, "--memory-sizes", "8", "--quiet"], capsys)
    assert rc == 2 and "reads its memory densely" in err and "pass --store STORE" in err
    rc, o, err = _run(["scale", soft, "--data", scale_data, "--store", store, "--memory-sizes", "8,40,80", "--samples", 4,
                       "--targets", 2, "--out", tmp_path / "o1", "--json", "--quiet"], capsys)
    assert rc == 0, err
    rows = json.loads(o)["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    for r in rows:
        assert math.isclose(r["gap"], r["nll"] - r["optimum"], abs_tol=1e-9)
    # a budget smaller than the smallest memory's measured cost per entry × |M|: the larger sizes do not fit
    rc, o, err = _run(["scale", soft, "--data", scale_data, "--store", store, "--memory-sizes", "8,40,80", "--samples", 4,
                       "--targets", 2, "--out", tmp_path / "o2", "--json", "--quiet", "--dense-budget", "1e-9"], capsys)
    assert rc == 0, err
    rows = json.loads(o)["rows"]
    assert rows[0]["status"] == "ok" and [r["status"] for r in rows[1:]] == ["does not fit", "does not fit"]
    assert "dense reading over |M| needs" in rows[1]["note"]
