"""`varmem train` and `varmem eval` through distributed.cli.main: exit codes, one-line errors, outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from varmem.cli import main
from varmem.distributed.rundir import FINAL_FILE, list_checkpoints
from tests.distributed.helpers import tiny_raw, write_config


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def cfg_file(tiny_data, tmp_path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_raw(tiny_data, tmp_path / "default-run", train={"log_every": 2}))


def test_train_then_eval_json(cfg_file, tmp_path, capsys):
    out = tmp_path / "run"
    rc, o, e = run(["train", "--config", cfg_file, "--steps", 6, "--out", out, "--set", "optim.lr=1e-3"], capsys)
    assert rc == 0, e
    assert "step 6/6" in o and "val" in o and "done: step 6" in o
    assert not (tmp_path / "default-run").exists()  # --out replaced run.out
    saved = (out / "config.yaml").read_text()
    assert "steps: 6" in saved and "lr: 0.001" in saved
    assert json.loads((out / FINAL_FILE).read_text())["step"] == 6

    # 50 episodes per classification task: the default 1,000 of every task by every method, the modified
    # Hausdorff baseline's included (~75 ms per 20-way 5-shot episode), is minutes on a loaded CPU
    cheap = ["--classification-episodes", 50]
    rc, o, e = run(["eval", out, "--samples", 12, "--episodes", 3, "--json", *cheap], capsys)
    assert rc == 0, e
    result = json.loads(o)
    assert result["step"] == 6 and result["samples"] == 12 and result["episodes"] == 3 and result["split"] == "evaluation"
    for key in ("nll_bound", "nll_bound_stderr", "kl_latent", "reconstruction", "objective_nll_bound"):  # the standin's terms
        assert isinstance(result[key], float), key
    assert result["nll_bound"] > 0
    assert "nll_vs_examples" in result["protocol"]
    # the same episodes and samples again: the same numbers
    assert json.loads(run(["eval", out, "--samples", 12, "--episodes", 3, "--json", *cheap], capsys)[1])["nll_bound"] == result["nll_bound"]

    rc, o, _ = run(["eval", out, "--samples", 4, "--episodes", 2, *cheap], capsys)
    assert rc == 0 and "NLL bound (K=4)" in o and "KL(q(z|...) || p(z|...))" in o
    assert "KL(q(a|x) || p(a))" not in o  # the stand-in model has no address


def test_resume_from_the_run_directory_alone(cfg_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "--config", cfg_file, "--steps", 4, "--out", out, "--quiet"], capsys)[0] == 0
    rc, o, e = run(["train", "--resume", "--out", out, "--steps", 8], capsys)
    assert rc == 0, e
    assert "resuming" in o and "step 8/8" in o
    assert [s for s, _ in list_checkpoints(out)] == [4, 8]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "data.dir={tmp}/no-such-data"], "no-such-data"),
        (["--set", "optim.lrr=1"], "unknown key 'lrr' in optim (known: lr, betas"),
        (["--set", "train.steps=many"], "train.steps must be an integer, got 'many'"),
        (["--set", "optim.grad_clip=-1"], "optim.grad_clip must be ≥ 0"),
        (["--set", "data.image_size=28"], "data.image_size is 28"),
        (["--set", "episode.train.ways=40"], "asks for 40 classes"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_bad_input_is_one_line_status_2_and_nothing_written(cfg_file, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    rc, o, err = run(["train", "--config", cfg_file, "--out", out] + [a.replace("{tmp}", str(tmp_path)) for a in extra], capsys)
    assert rc == 2
    assert err.startswith("varmem: error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and "step" not in o
    assert not out.exists()


def test_other_cli_errors(cfg_file, tmp_path, capsys):
    rc, _, err = run(["train", "--config", tmp_path / "missing.yaml"], capsys)
    assert rc == 2 and "missing.yaml does not exist" in err
    rc, _, err = run(["train", "--steps", 3], capsys)
    assert rc == 2 and "needs --config" in err
    rc, _, err = run(["eval", tmp_path], capsys)
    assert rc == 2 and "not a varmem run directory" in err
    out = tmp_path / "run"
    assert run(["train", "--config", cfg_file, "--steps", 2, "--out", out, "--quiet"], capsys)[0] == 0
    rc, _, err = run(["train", "--config", cfg_file, "--steps", 2, "--out", out], capsys)
    assert rc == 2 and "--resume" in err and "--overwrite" in err
    rc, _, err = run(["eval", out, "--samples", 0], capsys)
    assert rc == 2 and "--samples" in err
