"""Issue 10, items 14, 15 and 17 (the trainer's and evaluation's commands): values that trained silently,
files that gave tracebacks, evaluation files that were trusted too far, and --help. Each case is the
reproduction of the issue, now one ``varmem: error:`` line and status 2 (or the documented output)."""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from varmem.cli import build_parser, main
from varmem.distributed.config import ConfigError, RunConfig
from tests.distributed.helpers import tiny_raw, write_config

NON_DATA = ("train", "eval", "compare", "plot", "tune")


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2 and err.startswith("varmem: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture()
def cfg_file(tiny_data, tmp_path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_raw(tiny_data, tmp_path / "run", train={"steps": 2, "val_every": 0}))


# --- 14: numbers that trained silently, flags ---------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", ".inf", "-.inf", "nan", ".nan", "1e999", "1" + "0" * 400])
def test_non_finite_floats_are_refused_naming_the_field(cfg_file, tmp_path, capsys, value):
    """optim.eps=inf trained 2 steps with zero updates and exited 0."""
    rc, out, err = run(["train", "--config", cfg_file, "--set", f"optim.eps={value}"], capsys)
    one_error(rc, err, "optim.eps must be a finite number")
    assert not (tmp_path / "run").exists() and "step" not in out


def test_values_out_of_every_range_are_one_line(tmp_path):
    raw = tiny_raw(Path("d"), Path("r"))
    for section, key, value, needle in (("train", "seed", 2**64, "below 2^63"), ("optim", "lr", 10**5000, "finite"),
                                        ("run", "out", "a\0b", "NUL"), ("run", "out", "a\udcff", r"'a\xff'"),
                                        ("data", "dir", 10**5000, "must be a string")):
        bad = {**raw, section: {**raw[section], key: value}}
        with pytest.raises(ConfigError, match=re.escape(needle)) as info:
            RunConfig.from_dict(bad)
        assert len(str(info.value)) < 300 and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown section"):
        RunConfig.from_dict({**raw, 1: {}, None: {}})  # keys of mixed types once failed to sort


@pytest.mark.parametrize("flags, needle", [(["--workers", "-3"], "--workers must be ≥ 0"),
                                           (["--workers", "1", "--gpus-per-worker", "nan"], "--gpus-per-worker must be ≥ 0 and finite"),
                                           (["--workers", "1", "--gpus-per-worker", "-1"], "--gpus-per-worker must be ≥ 0 and finite"),
                                           (["--workers", "1", "--max-failures", "-5"], "--max-failures must be ≥ 0")])
def test_launch_flags_out_of_range_are_refused_before_anything_runs(cfg_file, tmp_path, capsys, flags, needle):
    one_error(*run(["train", "--config", cfg_file, *flags], capsys)[::2], needle)
    assert not (tmp_path / "run").exists()


# --- 15: files that are not text -----------------------------------------------------------------------


def test_binary_config_and_space_files_and_odd_bytes_in_set_are_one_line(cfg_file, tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    one_error(*run(["train", "--config", binary], capsys)[::2], f"config file {binary} is not UTF-8 text")
    one_error(*run(["tune", "--config", cfg_file, "--space", binary], capsys)[::2], f"space file {binary} is not UTF-8")
    one_error(*run(["train", "--config", tmp_path], capsys)[::2], "is a directory")
    one_error(*run(["train", "--config", cfg_file, "--set", "run.out=a\udcff"], capsys)[::2], r"'run.out=a\xff'", "UTF-8")
    one_error(*run(["train", "--config", cfg_file, "--set", "run.out=a\0"], capsys)[::2], "NUL")
    one_error(*run(["train", "--config", cfg_file, "--set", "train.steps=" + "9" * 5000], capsys)[::2], "--set")
    (tmp_path / "deep.yaml").write_text("train: " + "[" * 5000)
    one_error(*run(["train", "--config", tmp_path / "deep.yaml"], capsys)[::2], "deep.yaml")
    assert not (tmp_path / "run").exists()


# --- eval on things that are not runs; train on a family no plugin registered --------------------------


def test_eval_on_what_is_not_a_run_is_one_line(cfg_file, tmp_path, capsys):
    one_error(*run(["eval", tmp_path / "nowhere"], capsys)[::2], "nowhere does not exist")
    one_error(*run(["eval", cfg_file], capsys)[::2], "is a file, not a run directory")
    one_error(*run(["eval", tmp_path], capsys)[::2], "config.yaml is missing", "not a varmem run directory")
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    (tmp_path / "fresh" / "config.yaml").write_text(Path(cfg_file).read_text())
    one_error(*run(["eval", tmp_path / "fresh"], capsys)[::2], "holds no ckpt-*.pt", "train it first")
    one_error(*run(["eval", tmp_path / "fresh", "--checkpoint", tmp_path], capsys)[::2], "is a directory")


def test_a_family_of_a_plugin_not_loaded_is_one_line_naming_plugin(tiny_data, tmp_path, capsys):
    raw = tiny_raw(tiny_data, tmp_path / "run")
    raw["model"] = {"name": "research_family_nobody_loaded", "latent": 4}
    cfg = write_config(tmp_path / "c.yaml", raw)
    one_error(*run(["train", "--config", cfg], capsys)[::2], "'research_family_nobody_loaded' is not a registered",
              "--plugin")


# --- compare: files it trusted too far -----------------------------------------------------------------


def saved(tmp_path: Path, name: str, edit=None) -> Path:
    """A small valid `varmem eval --save` file (per-episode values consistent with each row), edited by ``edit``."""
    per = [95.0, 97.0]
    rows = [{"examples": n, "nll": 96.0 - n, "stderr": 1.0, "change": -n + 1.0, "change_stderr": 0.1, "episodes": 2,
             "nll_per_episode": [v - n for v in per]} for n in (1, 2)]
    classes = [{"classes": 1, "nll": 90.0, "stderr": 1.0, "optimum": 90.1, "gap": -0.1, "beats_optimum": True}]
    info = {"name": "tiny26", "source": "tiny", "fingerprint": "fp"}
    data = {"step": 10, "split": "evaluation", "samples": 100, "episodes": 2, "seed": 1, "nll_bound": 95.0,
            "nll_bound_stderr": 0.5, "dataset": info,
            "protocol": {"dataset": info, "split": "evaluation", "samples": 100, "seed": 1, "episodes": 2,
                         "nll_vs_examples": rows, "nll_vs_classes": classes,
                         "classification": {"5way1shot": {"q_a": {"accuracy": 0.8, "ci95": 0.02}}}}}
    if edit is not None:
        edit(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return path


def setter(*keys, value):
    def edit(data):
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, needle", [
    (setter("nll_bound", value="95.0"), "nll_bound must be a finite number ≥ 0, got '95.0'"),
    (setter("nll_bound", value=-3.0), "nll_bound must be a finite number ≥ 0, got -3.0"),
    (setter("nll_bound", value=math.inf), "nll_bound must be a finite number ≥ 0, got inf"),
    (setter("nll_bound", value=math.nan), "nll_bound must be a finite number"),
    (setter("protocol", "samples", value="100"), "protocol.samples must be an integer ≥ 1"),
    (setter("protocol", "split", value=["evaluation"]), "protocol.split must be a split name"),
    (setter("protocol", "dataset", value="tiny26"), "protocol.dataset must be a mapping"),
    (setter("protocol", "nll_vs_examples", value={"1": 2}), "protocol.nll_vs_examples must be a list"),
    (setter("protocol", "nll_vs_examples", 0, value=[1]), "protocol.nll_vs_examples[0] must be a mapping"),
    (setter("protocol", "nll_vs_examples", 1, "examples", value=1), "examples must be unique in its table"),
    (setter("protocol", "nll_vs_examples", 0, "nll", value=90.0), "nll must be the mean of its nll_per_episode"),
    (setter("protocol", "nll_vs_examples", 0, "stderr", value=0.2), "stderr must be the standard error"),
    (setter("protocol", "nll_vs_examples", 0, "nll_per_episode", value=[1, "x"]), "nll_per_episode[1] must be a finite"),
    (setter("protocol", "nll_vs_classes", 0, "optimum", value=None), "optimum must be a finite number"),
    (setter("protocol", "classification", "5way1shot", "q_a", "accuracy", value=1.5), "accuracy must be a finite number in [0, 1]"),
    (setter("protocol", "classification", "5way1shot", value=[0.8]), "5way1shot must be a mapping of methods"),
])
def test_compare_refuses_fields_of_the_wrong_type_or_value_naming_file_and_field(tmp_path, capsys, edit, needle):
    good, bad = saved(tmp_path, "good"), saved(tmp_path, "bad", edit)
    one_error(*run(["compare", f"A={good}", f"B={bad}"], capsys)[::2], str(bad), needle)


def test_compare_refuses_folders_and_labels_given_twice_and_accepts_the_valid_file(tmp_path, capsys):
    one_error(*run(["compare", f"A={tmp_path}"], capsys)[::2], f"{tmp_path}: a directory, not an evaluation file")
    good = saved(tmp_path, "good")
    one_error(*run(["compare", f"A={good}", f"A={good}"], capsys)[::2], "label 'A' is given twice")
    (tmp_path / "huge.json").write_text('{"step": ' + "1" * 5000 + "}")
    one_error(*run(["compare", f"A={tmp_path / 'huge.json'}"], capsys)[::2], "huge.json: not a JSON file")
    rc, out, _ = run(["compare", f"A={good}", f"B={good}"], capsys)
    assert rc == 0 and "95.00 ± 0.50" in out


def test_an_infinite_nll_is_printed_as_inf_not_as_a_missing_value():
    from varmem.models.eval.report import format_tables

    rows = [{"examples": 1, "nll": math.inf, "stderr": None, "kl_address": math.nan, "kl_latent": 1.0}]
    text = format_tables({"samples": 10, "episodes": 1, "nll_vs_examples": rows})
    line = next(line for line in text.splitlines() if line.strip().startswith("1 "))
    assert line.split()[:4] == ["1", "inf", "—", "—"] and "nan" in line  # "—" only where there is no value


# --- 17: --help ------------------------------------------------------------------------------------------


def subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub.choices[name] for name in NON_DATA}


@pytest.mark.parametrize("name", NON_DATA)
def test_help_has_no_default_none_no_doubled_default_and_every_option_has_help(name, capsys):
    parser = subparsers()[name]
    assert [a.dest for a in parser._actions if a.dest != "help" and not (a.help or "").strip()] == []
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "default None" not in text
    for action in parser._actions:  # an option's own help says its default at most once
        assert (action.help or "").count("default") <= 1, (action.dest, action.help)
        if action.required:
            assert "default" not in (action.help or ""), action.dest


def test_eval_help_shows_the_expensive_defaults_and_what_they_cost(capsys):
    from varmem.distributed import cli_eval
    from varmem.models.eval.classification import DEFAULT_TASKS
    from varmem.models.eval.cost import (bound_cost, classification_cost, nll_classes_cost, nll_conditioning_cost,
                                         nll_examples_cost)
    from varmem.models.eval.nll_tables import CLASS_TABLE_TARGETS, DEFAULT_EXAMPLES, class_counts

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("(default 1000)", "(default 100)", "per N-way K-shot classification task (default 1000)",
                   "(default: 5x1,5x5,20x1,20x5)", "by likelihood (default 10)", "19.0 M decodes", "36×"):
        assert needle in text, needle
    # the help's copies of the protocol's defaults, and its numbers, are the protocol's
    assert (cli_eval.DEFAULT_EXAMPLES, cli_eval.DEFAULT_TASKS, cli_eval.CLASS_TABLE_TARGETS) == (
        tuple(DEFAULT_EXAMPLES), tuple(DEFAULT_TASKS), CLASS_TABLE_TARGETS)
    assert cli_eval.class_rows(220) == class_counts(220)
    make_main = [bound_cost(20, 32, 100, 4), nll_examples_cost(20, DEFAULT_EXAMPLES, 100, 4),
                 nll_classes_cost(20, class_counts(220), CLASS_TABLE_TARGETS, 100, 4),
                 *(nll_conditioning_cost(20, c, (1, 2, 3, 4, 5, 10, 19), 100, 4) for c in (1, 2, 3, 4)),
                 *(classification_cost(f"{w}x1 {a}", "likelihood", 20, w, w, 10) for a in ("between", "within") for w in (5, 20))]
    assert sum(p.decodes for p in make_main) == cli_eval.MAKE_MAIN_DECODES
    assert round(sum(p.decodes for p in cli_eval.default_cost()) / 1e6, 1) == 19.0
    assert yaml.safe_load(Path(__file__).resolve().parents[2].joinpath(cli_eval.EXAMPLE["config"]).read_text())[
        "episode"]["eval"] == {"ways": 8, "shots": 4, "targets": 4}
