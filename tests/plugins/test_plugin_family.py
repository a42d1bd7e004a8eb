"""A family outside varmem, in one file, trained and evaluated through the command line with no
edit anywhere else (issue 9): ``--plugin path/to/file.py`` is all that names it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PLUGIN = Path(__file__).with_name("memory_mixture.py")
VARMEM = [sys.executable, "-c", "import sys; from varmem.cli import main; sys.exit(main(sys.argv[1:]))"]


def varmem(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*VARMEM, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def strokes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plugin") / "strokes26"
    proc = varmem("data", "build", "--source", "strokes", "--classes", 120, "--images-per-class", 6, "--seed", 0,
                  "--out", out, "--quiet", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_plugin_family_trains_20_steps_and_evaluates(strokes, tmp_path):
    config = {
        "data": {"dir": str(strokes), "image_size": 26},
        "episode": {"train": {"ways": 4, "shots": 2, "targets": 2}, "eval": {"ways": 4, "shots": 2, "targets": 2}},
        "model": {"name": "memory_mixture", "init_scale": 3.0},
        "optim": {"lr": 2e-2},
        "train": {"steps": 20, "num_samples": 2, "log_every": 5, "val_every": 10, "val_episodes": 2, "val_samples": 4,
                  "checkpoint_every": 10, "threads": 1, "device": "cpu"},
        "run": {"out": str(tmp_path / "run")},
    }
    path = tmp_path / "mixture.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    # without the plugin the family is unknown: one line that says how to load it
    proc = varmem("train", "--config", path, "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "model.name='memory_mixture' is not a registered model family" in proc.stderr and "--plugin" in proc.stderr

    proc = varmem("train", "--config", path, "--plugin", PLUGIN, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["step"] == 20
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    # the family's own terms are logged by their names, nothing else invented
    assert {"loss", "bound", "log_px_mixture", "gamma", "grad_norm"} <= set(train_rows[0])
    assert "kl_address" not in train_rows[0] and "kl_latent" not in train_rows[0]
    val = [r["nll_bound"] for r in rows if r["kind"] == "val"]  # the same fixed episodes at steps 10 and 20
    assert len(val) == 2 and val[1] < val[0], val  # it learned something in 20 steps
    assert final["val"]["nll_bound"] > 0 and 0 <= final["val"]["accuracy"] <= 1

    proc = varmem("eval", run, "--plugin", PLUGIN, "--samples", 4, "--episodes", 2, "--classification-episodes", 6,
                  "--likelihood-samples", 2, "--tasks", "4x1", "--tables", "examples", "--no-pictures", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["step"] == 20 and result["nll_bound"] > 0 and "log_px_mixture" in result
    protocol = result["protocol"]
    assert protocol["nll_vs_examples"], "the likelihood table ran"
    # q(a|x) classification is skipped (no address posterior), likelihood classification ran
    assert json.dumps(protocol).count("has no address posterior") >= 1

    # and eval without the plugin names what is missing
    proc = varmem("eval", run, "--samples", 4, "--episodes", 2, cwd=tmp_path)
    assert proc.returncode == 2 and "--plugin" in proc.stderr
