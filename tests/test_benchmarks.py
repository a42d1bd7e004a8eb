"""The benchmarks run on CPU and write rows that make sense (timings are not asserted)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from varmem.cli import main
from tests.distributed.conftest import tiny_data  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "stem, providers",
    [("vimco", "eager,compile"), ("memory_addressing", "eager"), ("memory_read", "eager"), ("gaussian_attention", "eager")],
)
def test_bench_kernels_writes_csv_and_json(tmp_path, stem, providers, capsys):
    rc = main(["bench", "kernels", "--only", stem, "--quick", "--device", "cpu", "--providers", providers,
               "--modes", "fwd,full", "--out-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "median_ms" in out  # the printed table
    csvs = list(tmp_path.glob("*.csv"))
    assert len(csvs) == 1, csvs
    rows = list(csv.DictReader(csvs[0].open()))
    assert rows and {r["provider"] for r in rows} == set(providers.split(","))
    assert {r["mode"] for r in rows} == {"fwd", "full"}
    for r in rows:
        assert not r.get("error"), r
        q20, med, q80 = float(r["q20_ms"]), float(r["median_ms"]), float(r["q80_ms"])
        assert 0 < q20 <= med <= q80
        assert float(r["gbps"]) > 0 and float(r["pct_of_copy"]) > 0
        assert r["env_torch"] and r["env_device"] == "cpu"
    meta = json.loads(csvs[0].with_suffix(".json").read_text())
    assert meta["environment"]["python"] and len(meta["rows"]) == len(rows)


def test_bench_train_times_the_training_step_of_a_tiny_config(tmp_path, tiny_data, capsys):  # noqa: F811
    out = tmp_path / "train_cpu"
    rc = main(["bench", "train", "--configs", str(REPO / "configs" / "smoke_tiny.yaml"), "--backends", "reference",
               "--steps", "3", "--warmup", "1", "--threads", "1", "--set", f"data.dir={tiny_data}", "--out", str(out)])
    assert rc == 0
    assert "episodes_per_s" in capsys.readouterr().out  # the printed table
    rows = list(csv.DictReader(out.with_suffix(".csv").read_text().splitlines()))
    assert len(rows) == 1, rows
    r = rows[0]
    assert (r["config"], r["model"], r["backend"], r["status"], r["device"]) == (
        "configs/smoke_tiny.yaml", "vma", "reference", "ok", "cpu"), r.get("reason")
    assert int(r["steps"]) == 3 and int(r["warmup"]) == 1 and int(r["threads"]) == 1
    q20, med, q80 = float(r["q20_ms"]), float(r["median_ms"]), float(r["q80_ms"])
    assert 0 < q20 <= med <= q80
    steps_per_s = float(r["steps_per_s"])
    assert steps_per_s > 0 and math.isclose(steps_per_s, 1e3 / med, rel_tol=1e-9)
    assert math.isclose(float(r["episodes_per_s"]), steps_per_s * int(r["episodes_per_step"]), rel_tol=1e-9)
    assert float(r["cpu_ms_per_step"]) > 0 and float(r["peak_rss_mb"]) > 0 and not r["peak_cuda_mb"]
    assert 0 <= float(r["data_wait"]) < 1 and math.isfinite(float(r["mean_loss"]))
    assert r["kernels"] == "memory_addressing:reference vimco_surrogate:reference"  # VMA's kernels, on the reference
    assert float(r["load_before"]) >= 0 and float(r["load_after"]) >= 0
    assert r["env_torch"] and r["env_device"] == "cpu"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["environment"]["python"] and meta["steps"] == 3 and len(meta["rows"]) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_train_says_why_a_backend_is_unavailable(tmp_path, capsys):
    out = tmp_path / "train_cuda"
    rc = main(["bench", "train", "--configs", "configs/smoke_tiny.yaml", "--device", "cuda", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["backend"], r["status"]) for r in rows] == [("reference", "unavailable"), ("triton", "unavailable")]
    assert all("CUDA" in r["reason"] for r in rows)
    assert "unavailable: torch sees no CUDA device" in capsys.readouterr().out
