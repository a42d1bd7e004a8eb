"""``varmem tune``: the space file, bad input before any trial, a small ASHA search end to end, and
``--resume`` of an interrupted search, with the trainer tests' stand-in model on their tiny dataset.

The two searches run on the session's Ray cluster: 4 trials of 8 steps (≈ 15–20 s), then 2 trials
interrupted and resumed (≈ 25–30 s).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from varmem.models.registry import load_plugins

import varmem.distributed.cluster as cluster
import varmem.distributed.tune as tune_module  # python -m varmem.distributed.tune
from varmem.cli import main
from varmem.distributed.config import RunConfig
from varmem.distributed.rundir import FINAL_FILE, METRICS_FILE
from varmem.distributed.search import trust
from varmem.distributed.search.searchdir import BEST_CONFIG, RESULTS_CSV, RESULTS_JSON, SIGNATURE_FILE, TUNE_DIR
from varmem.distributed.search.space import SpaceError, check_space, load_space, parse_space
from varmem.distributed.search.trial import METRIC, TIME_ATTR, TrialReporter, tune_metrics
from tests.distributed import interrupt
from tests.distributed.helpers import tiny_raw, write_config

REPO = Path(__file__).resolve().parents[2]
SMOKE_SPACE = REPO / "configs" / "space_smoke.yaml"
STEPS = 8


@pytest.fixture(autouse=True)
def search_key(tmp_path, monkeypatch):
    """The searches sign their state with a key of the test's (never the user's ~/.config/varmem/search_key)."""
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "search_key"))


def run(argv, capsys, entry=main):
    rc = entry([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def tiny_config(tiny_data: Path, tmp_path: Path, **model) -> Path:
    """8 steps, a validation every 2 and a checkpoint every 4 steps."""
    raw = tiny_raw(tiny_data, tmp_path / "unused-run", train={
        "steps": STEPS, "episodes_per_step": 1, "log_every": 2, "val_every": 2, "checkpoint_every": 4, "threads": 1})
    raw["model"].update(model)
    return write_config(tmp_path / "tiny.yaml", raw)


# --- the space file (no Ray) ------------------------------------------------------------------


def test_space_file_format():
    base = RunConfig.load(REPO / "configs" / "vma_strokes.yaml").resolve_paths()
    space, variants = check_space(load_space(REPO / "configs" / "space_vma.yaml"), base)
    assert list(space) == ["optim.lr", "episode.train.shots", "train.num_samples", "model.z_dim"]
    assert space["optim.lr"].kind == "grid" and space["optim.lr"].args == (1e-4, 3e-4)
    assert space["train.num_samples"].args == (2, 4, 8)
    assert len(variants) == 2 + 2 + 3 + 2 + 2 * 2 * 3 * 2  # each value alone, then every combination

    raw = {"optim.lr": {"grid": ["1e-4", 3.0e-4]}, "optim.weight_decay": {"loguniform": ["1e-6", 1.0e-3]},
           "optim.grad_clip": {"uniform": [1, 20]}, "episode.train.shots": {"randint": [1, 5]},
           "train.val_every": 100, "model.channels": {"choice": [[16, 16, 32, 32, 32, 32], [8, 8, 16, 16, 16, 16]]}}
    space, _ = check_space(parse_space(raw, "s.yaml"), base, "s.yaml")
    assert space["optim.lr"].args == (1e-4, 3e-4)  # YAML 1.1's string "1e-4" as the config holds it
    assert space["optim.weight_decay"].args == (1e-6, 1e-3) and space["optim.grad_clip"].args == (1.0, 20.0)
    assert space["train.val_every"].kind == "value" and space["train.val_every"].domain() == 100
    assert space["model.channels"].args[1] == [8, 8, 16, 16, 16, 16]
    shots = space["episode.train.shots"].domain()  # both ends included: Tune's randint excludes the upper one
    assert (shots.lower, shots.upper) == (1, 6)


@pytest.mark.parametrize("raw, message", [
    ({"optim.learning_rate": {"grid": [1.0e-4, 3.0e-4]}}, "optim.learning_rate: 0.0001 does not fit the config: unknown key 'learning_rate' in optim"),
    ({"model.zdim": {"choice": [32, 64]}}, "unknown key 'zdim'"),
    ({"train.num_samples": {"choice": [2, "many"]}}, "train.num_samples: 'many' does not fit the config: train.num_samples must be an integer"),
    ({"train.num_samples": {"uniform": [2, 8]}}, "uniform draws floats: use randint or choice"),
    ({"optim.lr": {"loguniform": [0.0, 1.0e-3]}}, "loguniform needs 0 < low"),
    ({"optim.lr": {"normal": [1.0e-4, 1.0]}}, "unknown distribution 'normal'"),
    ({"optim.lr": {"grid": [1.0e-4], "choice": [1.0e-4]}}, "give exactly one of"),
    ({"episode.eval.shots": {"choice": [1, 2]}}, "episode.eval.shots cannot be searched"),
    ({"train.steps": {"choice": [10, 20]}}, "set it with --steps"),
    ({"lr": {"grid": [1.0e-4]}}, "'lr' is not a config path"),
])
def test_space_errors(raw, message):
    base = RunConfig.load(REPO / "configs" / "vma_strokes.yaml")
    with pytest.raises(SpaceError, match="^s.yaml: ") as info:
        check_space(parse_space(raw, "s.yaml"), base, "s.yaml")
    assert message in str(info.value)


@pytest.fixture()
def no_cluster(monkeypatch):
    """These errors must come before the search touches Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("the search reached the Ray cluster")

    monkeypatch.setattr(cluster, "connect", refuse)


@pytest.mark.parametrize("space, extra, message", [
    ("optim.learning_rate: {grid: [1.0e-4, 3.0e-4]}", [], "space.yaml: optim.learning_rate: 0.0001 does not fit the config: unknown key 'learning_rate'"),
    ("episode.train.shots: {choice: [2, 9]}", [], "episode.train.shots: 9: episode spec needs 11 images per class"),
    ("model.latnt: {choice: [2, 4]}", [], "model.latnt: 2 does not fit the config: unknown key 'latnt' in model"),
    ("optim.lr: {grid: [1.0e-3]}", ["--samples", "0"], "--samples must be ≥ 1"),
    ("optim.lr: {grid: [1.0e-3]}", ["--resume"], "--resume continues the search"),
])
@pytest.mark.parametrize("entry", [main, tune_module.main], ids=["varmem", "python-m"])
def test_bad_search_fails_before_any_trial(tiny_data, tmp_path, capsys, no_cluster, space, extra, message, entry):
    (tmp_path / "space.yaml").write_text(space + "\n")
    out = tmp_path / "search"
    rc, _, err = run(["tune"] * (entry is main) + ["--config", tiny_config(tiny_data, tmp_path), "--space",
                      tmp_path / "space.yaml", "--out", out, *extra], capsys, entry)
    assert rc == 2
    assert err.startswith("varmem: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()  # nothing written


def test_resume_needs_a_search(tmp_path, capsys, no_cluster):
    rc, _, err = run(["tune", "--resume", "--out", tmp_path / "nothing"], capsys)
    assert rc == 2 and "nothing to resume" in err


def test_reporter_reports_only_with_the_metric(tmp_path):
    """Tune refuses a report without the metric: nothing before the first validation; then one report
    per new validation and per new checkpoint, each with the newest validation NLL."""
    reports = []
    reporter = TrialReporter(tmp_path, lambda metrics, ckpt: reports.append((metrics, ckpt)))

    def row(**r):
        with open(tmp_path / METRICS_FILE, "a") as f:
            f.write(json.dumps(r) + "\n")

    train = {"kind": "train", "loss": 3.0, "nll_bound": 3.0, "kl_address": 0.0, "kl_latent": 1.0, "grad_norm": 2.0}
    row(step=2, **train)
    assert not reporter.update() and not reporter.update(tmp_path / "ckpt-00000002.pt")
    row(kind="val", step=2, nll_bound=5.0, nll_bound_stderr=0.1)
    row(step=4, **train)
    assert reporter.update()
    assert not reporter.update()  # nothing new
    assert reporter.update(tmp_path / "ckpt-00000004.pt")  # a new checkpoint: reported with the newest validation
    (tmp_path / METRICS_FILE).open("a").write('{"kind": "val", "st')  # a line being written is skipped
    assert not reporter.update()
    assert [(m[TIME_ATTR], m[METRIC], m["val_step"], c) for m, c in reports] == [
        (4, 5.0, 2, None), (4, 5.0, 2, tmp_path / "ckpt-00000004.pt")]
    assert reports[0][0]["train_loss"] == 3.0 and reports[0][0]["val_nll_bound_stderr"] == 0.1
    assert set(tune_metrics({}, {"step": 6, "nll_bound": 1.5}, 6)) == {TIME_ATTR, METRIC, "val_step"}


# --- searches on the session's cluster --------------------------------------------------------


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.ray
def test_asha_search_end_to_end(tiny_data, tmp_path, capsys, ray_session):
    out = tmp_path / "search"
    config = tiny_config(tiny_data, tmp_path)
    rc, stdout, err = run(["tune", "--config", config, "--space", SMOKE_SPACE, "--samples", 2, "--scheduler", "asha",
                           "--reduction-factor", 2, "--out", out, "--quiet"], capsys)
    assert rc == 0, err

    # the table: 4 trials (the 2-point lr grid × 2 samples), printed and saved
    rows = csv_rows(out / RESULTS_CSV)
    assert len(rows) == 4
    assert sorted(float(r["optim.lr"]) for r in rows) == [1e-3, 1e-3, 1e-2, 1e-2]
    assert {int(r["train.num_samples"]) for r in rows} <= {2, 3}
    for r in rows:
        assert r["trial"] in stdout
        assert r["status"] in ("finished", "stopped"), r
        assert math.isfinite(float(r["val_nll_final"])) and float(r["val_nll_best"]) <= float(r["val_nll_final"])
        assert (int(r["steps"]) == STEPS) == (r["status"] == "finished")
        assert (Path(r["run_dir"]) / METRICS_FILE).is_file()
        # Tune saw the ASHA metric and the time attribute in every report
        results = [json.loads(line) for line in (out / TUNE_DIR / r["trial"] / "result.json").read_text().splitlines()]
        assert results and all(METRIC in x and TIME_ATTR in x for x in results)
        assert results[-1][METRIC] == pytest.approx(float(r["val_nll_final"]))
    assert any(r["status"] == "finished" for r in rows)
    summary = json.loads((out / RESULTS_JSON).read_text())
    assert summary["metric"] == METRIC and summary["mode"] == "min" and len(summary["rows"]) == 4

    # the best config: the argmin of the final validation NLL, a config `varmem train` takes
    best = min(rows, key=lambda r: float(r["val_nll_final"]))
    assert summary["best"] == best["trial"] and best["best"] == "1"
    loaded = RunConfig.load(out / BEST_CONFIG)
    assert loaded.optim.lr == float(best["optim.lr"]) and loaded.train.num_samples == int(best["train.num_samples"])
    changed = {d.split(":")[0] for d in RunConfig.load(config).differences(loaded)}
    assert changed <= {"optim.lr", "train.num_samples", "run.out"}
    assert loaded.run.out == str(out / "best")
    rc, _, err = run(["train", "--config", out / BEST_CONFIG, "--steps", 1, "--quiet"], capsys)
    assert rc == 0, err
    assert (out / "best" / FINAL_FILE).is_file()


@pytest.mark.ray
def test_resume_an_interrupted_search(tiny_data, tmp_path, capsys, ray_session):
    """Trial 1 of 2 (one at a time) interrupts the search in its 6th step, after its step-4 checkpoint;
    --resume finishes it from that checkpoint and runs trial 2."""
    marker = tmp_path / "interrupted"
    load_plugins([interrupt.PLUGIN])  # registered here and in every trial
    config = tiny_config(tiny_data, tmp_path, name="interrupting", interrupt_at_call=6, pid=os.getpid(),
                         marker=str(marker))
    out = tmp_path / "search"
    rc, stdout, err = run(["tune", "--config", config, "--space", SMOKE_SPACE, "--max-concurrent", 1,
                           "--scheduler", "asha", "--out", out, "--quiet"], capsys)
    assert marker.is_file(), err
    assert rc == 130 and f"varmem tune --resume --out {out}" in stdout
    first = csv_rows(out / RESULTS_CSV)
    assert [(r["status"], r["steps"]) for r in first] == [("unfinished", "4")]
    trust.verify(out)  # the interrupted search's pickled state carries our signature ...
    signed = json.loads((out / SIGNATURE_FILE).read_text())["files"]
    assert "tune/tuner.pkl" in signed and any(name.startswith("tune/experiment_state-") for name in signed)

    rc, stdout, err = run(["tune", "--resume", "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    rows = csv_rows(out / RESULTS_CSV)
    assert len(rows) == 2 and rows[0]["trial"] == first[0]["trial"]
    assert rows[0]["status"] == "finished"
    final = json.loads((Path(rows[0]["run_dir"]) / FINAL_FILE).read_text())
    assert final["resumed_from"] == 4 and final["step"] == STEPS  # continued from its checkpoint, not from scratch
    assert rows[1]["status"] in ("finished", "stopped")
    assert RunConfig.load(out / BEST_CONFIG).optim.lr in (1e-3, 1e-2)
