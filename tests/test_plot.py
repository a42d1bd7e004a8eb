"""``varmem plot``: training curves from metrics.jsonl, several runs overlaid, clear errors."""
from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from varmem.cli import main
from varmem.distributed.plots import figure_size, plot_training, read_metrics
from varmem.plotting import DPI
from varmem.typed import ConfigError


def plot(argv: list[str]) -> int:
    """``varmem plot ...``: exit status; its output in capsys."""
    return main(["plot", *argv])


def rows_of(family_term: str, scale: float, steps=(5, 10, 15, 20), val_every=10) -> list[dict]:
    """Rows as the train loop writes them, with a family term of its own name and bookkeeping."""
    rows = []
    for s in steps:
        rows.append({"kind": "train", "step": s, "loss": scale * 100 / s, "nll_bound": scale * 90 / s,
                     family_term: scale * s, "lr": 1e-3, "eta_s": 3.0, "elapsed_s": 0.1 * s, "samples": 4})
        if s % val_every == 0:
            rows.append({"kind": "val", "step": s, "nll_bound": scale * 80 / s, "nll_bound_stderr": 0.5,
                         "accuracy": s / 40, "episodes": 4, "samples": 10})
    return rows


def write_run(path, rows, tail: str = "") -> None:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def test_the_plotted_series_are_the_rows_values(tmp_path):
    a, b = rows_of("kl_context", 1.0), rows_of("kl_per_step", 2.0, steps=(4, 8, 12), val_every=4)
    path, plotted = plot_training({"a": a, "b": b}, ["loss", "nll_bound", "kl_context", "kl_per_step"], tmp_path / "t.png")
    assert plotted["a"]["loss"] == {"train": ([5, 10, 15, 20], [r["loss"] for r in a if r["kind"] == "train"])}
    assert plotted["a"]["nll_bound"]["val"] == ([10, 20], [8.0, 4.0])
    assert plotted["b"]["nll_bound"]["val"] == ([4, 8, 12], [r["nll_bound"] for r in b if r["kind"] == "val"])
    assert plotted["a"]["kl_context"]["train"][1] == [5.0, 10.0, 15.0, 20.0] and "kl_per_step" not in plotted["a"]
    assert "kl_context" not in plotted["b"] and plotted["b"]["kl_per_step"]["train"][0] == [4, 8, 12]
    assert path == tmp_path / "t.png"


def test_default_metrics_are_every_model_value_and_no_bookkeeping(tmp_path):
    _, plotted = plot_training({"a": rows_of("kl_context", 1.0)}, None, tmp_path / "t.png")
    assert list(plotted["a"]) == ["loss", "nll_bound", "kl_context", "lr", "accuracy"]  # stderr: a band, not a panel


def test_cli_writes_a_png_of_the_expected_size_beside_the_first_run(tmp_path, capsys):
    write_run(tmp_path / "vma", rows_of("kl_address", 1.0))
    write_run(tmp_path / "vae", rows_of("kl_latent", 1.5), tail='{"kind": "train", "st')  # a row being written
    assert plot([str(tmp_path / "vma"), str(tmp_path / "vae"), "--metrics", "loss,nll_bound,kl_address,kl_latent"]) == 0
    out = tmp_path / "vma" / "plots" / "training.png"
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG"
        w, h = figure_size(4)
        assert image.size == (round(w * DPI), round(h * DPI)) == (3 * 480, 2 * 360)
    assert not list(out.parent.glob(".*"))  # written atomically: no temporary file left


def test_errors_name_the_file_and_what_to_do(tmp_path, capsys):
    write_run(tmp_path / "run", rows_of("kl_context", 1.0))
    assert plot([str(tmp_path / "run"), "--metrics", "loss,kl_contxt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("varmem: error: --metrics: 'kl_contxt' is not logged by the run (run); available: loss, "
                          "nll_bound, kl_context, lr, accuracy") and "Traceback" not in err
    assert plot([str(tmp_path / "none")]) == 2
    assert f"run directory {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    (tmp_path / "fresh").mkdir()
    assert plot([str(tmp_path / "fresh")]) == 2
    assert f"{tmp_path / 'fresh' / 'metrics.jsonl'} does not exist" in capsys.readouterr().err
    write_run(tmp_path / "empty", [])
    assert plot([str(tmp_path / "empty")]) == 2
    assert "metrics.jsonl holds no train or val rows yet" in capsys.readouterr().err
    assert plot([str(tmp_path / "run"), "--out", str(tmp_path / "t.svg")]) == 2
    assert "give a file name ending in .png" in capsys.readouterr().err
    write_run(tmp_path / "damaged", [], tail='{"kind": "train"\n{"kind": "train", "step": 1, "loss": 1.0}\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl: line 1 is not a JSON object"):
        read_metrics(tmp_path / "damaged")


def test_nan_values_are_kept_as_gaps(tmp_path):
    rows = rows_of("kl_context", 1.0)
    rows[0]["loss"] = float("nan")
    _, plotted = plot_training({"a": rows}, ["loss"], tmp_path / "t.png")
    assert math.isnan(plotted["a"]["loss"]["train"][1][0])
