"""The distributed benchmark's in-process case end to end (the Ray cases are the same code with --workers N)."""
from __future__ import annotations

import csv
import json

import pytest

from varmem.cli import main

pytestmark = pytest.mark.slow


def test_bench_distributed_in_process_writes_a_table_csv_and_json(tmp_path, capsys):
    rc = main(["bench", "distributed", "--cases", "in-process", "--steps", "30", "--repeats", "1",
               "--workdir", str(tmp_path / "work"), "--out-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "steps_per_s" in out and "data wait" in out
    rows = list(csv.DictReader((tmp_path / "distributed_smoke_tiny_cpu.csv").open()))
    assert len(rows) == 1 and rows[0]["case"] == "in-process" and rows[0]["global_batch"] == "1"
    assert float(rows[0]["steps_per_s"]) > 0 and 0 <= float(rows[0]["data_wait"]) < 1
    assert 0 < float(rows[0]["first_step_s"]) < float(rows[0]["wall_s"])
    meta = json.loads((tmp_path / "distributed_smoke_tiny_cpu.json").read_text())
    assert meta["summary"][0]["vs_in_process"] == 1.0 and meta["environment"]["torch"]
