"""The kernel benchmark harness runs on CPU and writes rows that make sense (timings are not asserted)."""
from __future__ import annotations

import csv
import json

import pytest

from distributed.cli import main

pytestmark = pytest.mark.slow


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
