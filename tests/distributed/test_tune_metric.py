"""The metric a search ranks its trials by (distributed/search/metric.py): the validation NLL bound for
families with a likelihood, the validation accuracy for classifiers without one (Matching Networks), a
``metric:`` named in the space file, and one-line refusals — a metric a family does not log, a search
mixing families with and without a likelihood — before any trial. One Ray search of one Matching Networks
trial (4 steps, ≈ 10 s) shows the reports, the table and the best config going by accuracy.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import varmem.distributed.cluster as cluster
from tests.distributed.helpers import tiny_raw, write_config
from varmem.cli import main
from varmem.distributed.search import trust
from varmem.distributed.search.metric import MetricError, SearchMetric, TrialModel, choose_metric
from varmem.distributed.search.searchdir import RESULTS_CSV, RESULTS_JSON, TUNE_DIR, load_search
from varmem.distributed.search.space import load_space_file

MATCHING = {"name": "matching_networks", "channels": 8, "layers": 2}


@pytest.fixture(autouse=True)
def search_key(tmp_path, monkeypatch):
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "search_key"))


@pytest.fixture()
def no_cluster(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the search reached the Ray cluster")

    monkeypatch.setattr(cluster, "connect", refuse)


def config_file(tiny_data: Path, tmp_path: Path, model: dict, steps: int = 4) -> Path:
    raw = tiny_raw(tiny_data, tmp_path / "unused-run", train={
        "steps": steps, "episodes_per_step": 1, "log_every": 2, "val_every": 2, "checkpoint_every": 2, "threads": 1})
    raw["model"] = dict(model)
    return write_config(tmp_path / "base.yaml", raw)


def space_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "space.yaml").write_text(text)
    return tmp_path / "space.yaml"


# --- the metric, on its own ---------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("accuracy", SearchMetric("accuracy", "max", True)),
    ("nll_bound", SearchMetric("nll_bound", "min", True)),
    ({"name": "cross_entropy", "mode": "min"}, SearchMetric("cross_entropy", "min", True)),
    ({"name": "accuracy", "mode": "min"}, SearchMetric("accuracy", "min", True)),
])
def test_metric_from_the_space_file(raw, expected):
    assert SearchMetric.from_raw(raw, "s.yaml") == expected


@pytest.mark.parametrize("raw, message", [
    ("cross_entropy", "s.yaml: metric: cross_entropy: say whether lower or higher is better"),
    ({"name": "accuracy", "mode": "up"}, "mode must be min or max, got 'up'"),
    ({"nam": "accuracy"}, "expected a validation value's name or {name: ..., mode: min|max}"),
    ("step", "'step' is not a validation value"),
    (3, "expected a validation value's name"),
])
def test_bad_metrics(raw, message):
    with pytest.raises(MetricError) as info:
        SearchMetric.from_raw(raw, "s.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def model(family: str, likelihood: bool, classifies: bool, values: tuple[str, ...] = ()) -> TrialModel:
    return TrialModel(shown=f"model.name: {family!r}", family=family, likelihood=likelihood, classifies=classifies,
                      all_values=(lambda: values) if values else None)


def test_the_default_metric_follows_the_families():
    vma, vae = model("vma", True, True), model("vae", True, False)
    mn, gen = model("matching_networks", False, True), model("sampler", False, False)
    assert choose_metric(None, [vma, vae]) == SearchMetric("nll_bound", "min")
    assert choose_metric(None, [mn]) == SearchMetric("accuracy", "max")
    with pytest.raises(MetricError, match=r"mix families with a likelihood \(vma: .*\) and without one \(matching_networks: "
                                          r".*name one every trial logs, e.g. metric: accuracy"):
        choose_metric(None, [vma, mn])
    with pytest.raises(MetricError, match="name a validation value every trial logs"):
        choose_metric(None, [vae, mn])  # the VAE does not classify: accuracy is no way out
    with pytest.raises(MetricError, match=r"sampler\) has neither a likelihood nor a classifier"):
        choose_metric(None, [mn, gen])
    accuracy = SearchMetric("accuracy", "max", True)
    assert choose_metric(accuracy, [vma, mn]) == accuracy  # named, and both log it: the mixed search runs
    with pytest.raises(MetricError, match=r"s.yaml: metric: accuracy: model.name: 'vae' \(vae\) does not log it in "
                                          r"validation \(it logs nll_bound, nll_bound_stderr\)"):
        choose_metric(accuracy, [vma, vae], "s.yaml")
    ce = SearchMetric("cross_entropy", "min", True)
    assert choose_metric(ce, [model("matching_networks", False, True, ("accuracy", "cross_entropy"))]) == ce


# --- before any trial: --check, with the real families -------------------------------------------


def test_a_classifier_search_is_ranked_by_accuracy(tiny_data, tmp_path, capsys, no_cluster):
    config = config_file(tiny_data, tmp_path, MATCHING)
    rc = main(["tune", "--config", str(config), "--space", str(space_file(tmp_path, "optim.lr: {grid: [1.0e-3]}\n")),
               "--out", str(tmp_path / "s"), "--check"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "trials ranked by the highest final validation accuracy (val_accuracy, max)" in out


@pytest.mark.parametrize("space, message", [
    # Matching Networks has no likelihood: the NLL bound named as the metric is refused, listing what it logs
    ("metric: nll_bound\noptim.lr: {grid: [1.0e-3]}\n",
     "space.yaml: metric: nll_bound: the base config (matching_networks) does not log it in validation (it logs "
     "accuracy, accuracy_stderr, cross_entropy, objective_accuracy)"),
    ("metric: {name: nll, mode: min}\noptim.lr: {grid: [1.0e-3]}\n", "metric: nll: the base config (matching_networks) does "
     "not log it"),
    # a stand-in (likelihood, no classifier) beside Matching Networks (classifier, no likelihood)
    ("model.name: {choice: [matching_networks, standin]}\n",
     "space.yaml: the trials mix families with a likelihood (standin: model.name: 'standin') and without one "
     "(matching_networks: the base config): there is no default metric for both"),
    ("metric: accuracy\nmodel.name: {choice: [matching_networks, standin]}\n",
     "space.yaml: metric: accuracy: model.name: 'standin' (standin) does not log it in validation (it logs kl_latent, "
     "nll_bound, nll_bound_stderr, objective_nll_bound, reconstruction)"),
])
def test_a_metric_the_trials_cannot_report_fails_before_any_trial(tiny_data, tmp_path, capsys, no_cluster, space, message):
    config = config_file(tiny_data, tmp_path, {"name": "matching_networks"})
    out = tmp_path / "s"
    rc = main(["tune", "--config", str(config), "--space", str(space_file(tmp_path, space)), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("varmem: error: ") and err.count("\n") == 1, err
    assert message.replace("space.yaml", str(tmp_path / "space.yaml")) in err, err
    assert not out.exists()


def test_the_named_metric_is_saved_for_resume(tiny_data, tmp_path):
    space, metric = load_space_file(space_file(tmp_path, "metric: {name: cross_entropy, mode: min}\noptim.lr: 1.0e-3\n"))
    assert list(space) == ["optim.lr"] and metric == SearchMetric("cross_entropy", "min", True)
    from varmem.distributed.config import RunConfig
    from varmem.distributed.search.searchdir import SearchOptions, save_search

    save_search(tmp_path / "s", RunConfig.load(config_file(tiny_data, tmp_path, MATCHING)), space, SearchOptions(),
                tmp_path, "space.yaml", metric)
    assert load_search(tmp_path / "s")[5] == metric


# --- a search of a classifier, on the session's cluster ------------------------------------------


@pytest.mark.ray
def test_a_matching_networks_search_reports_and_ranks_by_accuracy(tiny_data, tmp_path, capsys, ray_session):
    out = tmp_path / "search"
    config = config_file(tiny_data, tmp_path, MATCHING)
    rc = main(["tune", "--config", str(config), "--space", str(space_file(tmp_path, "optim.lr: {grid: [1.0e-3]}\n")),
               "--out", str(out), "--quiet"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    rows = list(csv.DictReader(open(out / RESULTS_CSV, newline="")))
    assert len(rows) == 1 and rows[0]["status"] == "finished"
    val_rows = [json.loads(line) for line in (Path(rows[0]["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["accuracy"] for r in val_rows if r["kind"] == "val"]
    assert len(accuracies) == 2 and all("nll_bound" not in r for r in val_rows if r["kind"] == "val")
    assert float(rows[0]["val_accuracy_final"]) == pytest.approx(accuracies[-1])
    assert float(rows[0]["val_accuracy_best"]) == pytest.approx(max(accuracies))
    results = [json.loads(line) for line in (out / TUNE_DIR / rows[0]["trial"] / "result.json").read_text().splitlines()]
    assert results and all("val_accuracy" in r and "val_nll_bound" not in r for r in results)
    summary = json.loads((out / RESULTS_JSON).read_text())
    assert (summary["metric"], summary["mode"], summary["best"]) == ("val_accuracy", "max", rows[0]["trial"])
    assert "val accuracy final" in stdout and "final validation accuracy" in stdout
