"""`varmem data ...` end to end on fixture files: exit codes, one-line errors, outputs."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from varmem.cli import main
from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import LakeRunEpisodes
from tests.episodes.fixtures import make_folder_tree, make_lake_runs, make_omniglot_zip


@pytest.fixture()
def omni(tmp_path):
    bg = make_omniglot_zip(tmp_path / "images_background.zip", alphabets={"Alpha": 4, "Beta": 3}, images_per_class=6)
    ev = make_omniglot_zip(tmp_path / "images_evaluation.zip", alphabets={"Gamma": 3}, images_per_class=6,
                           top="images_evaluation", seed=1)
    return tmp_path / "images_background.zip", tmp_path / "images_evaluation.zip", bg, ev


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_build_info_verify_show_omniglot(tmp_path, omni, capsys):
    bg_zip, ev_zip, bg, _ = omni
    out = tmp_path / "om26"
    rc, o, e = run(["data", "build", "--source", "omniglot", "--path", bg_zip, "--path", ev_zip, "--out", out, "--quiet"], capsys)
    assert rc == 0, e
    assert "background" in o and "evaluation" in o
    rc, o, _ = run(["data", "info", out, "--json"], capsys)
    info = json.loads(o)
    assert info["splits"]["background"]["classes"] == 7 and info["splits"]["background"]["images"] == 42
    assert info["splits"]["evaluation"]["classes"] == 3 and info["image_shape"] == [26, 26]
    # the stored images are the fixture's images after crop + 4×4 max-pool
    ds = Dataset.open(out)
    first = bg[("Alpha", sorted(k[1] for k in bg if k[0] == "Alpha")[0])]
    expected = first[:, :104, :104].reshape(-1, 26, 4, 26, 4).max(axis=(2, 4))
    assert np.array_equal(ds.split("background").class_images(0), expected)
    assert run(["data", "verify", out], capsys)[0] == 0
    png = tmp_path / "pics" / "grid.png"
    rc, o, _ = run(["data", "show", out, "--out", png, "--classes", "3", "--per-class", "4"], capsys)
    assert rc == 0 and Image.open(png).size[0] > 4 * 26
    rc, _, e = run(["data", "show", out, "--episode", "--ways", "3", "--shots", "2", "--targets", "2", "--out", tmp_path / "ep.png"], capsys)
    assert rc == 0, e
    pic = np.asarray(Image.open(tmp_path / "ep.png"))
    assert pic.min() == 0 and pic.max() == 255  # ink drawn dark on white


def test_verify_fails_with_status_1_on_a_tampered_shard(tmp_path, omni, capsys):
    out = tmp_path / "om"
    assert run(["data", "build", "--source", "omniglot", "--path", omni[0], "--out", out, "--quiet"], capsys)[0] == 0
    shard = next(out.glob("*.arrow"))
    data = bytearray(shard.read_bytes())
    data[-100] ^= 1
    shard.write_bytes(bytes(data))
    rc, _, e = run(["data", "verify", out], capsys)
    assert rc == 1 and shard.name in e and "sha256" in e


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "--source", "omniglot", "--path", "{tmp}/missing.zip", "--out", "{tmp}/x"], "missing.zip does not exist"),
        (["data", "build", "--source", "omniglot", "--path", "{tmp}/notomni.zip", "--out", "{tmp}/x"], "notomni.zip"),
        (["data", "build", "--source", "strokes", "--classes", "0", "--out", "{tmp}/x"], "--classes"),
        (["data", "build", "--source", "omniglot", "--out", "{tmp}/x"], "needs --path"),
        (["data", "info", "{tmp}"], "manifest.json is missing"),
        (["data", "build", "--source", "omniglot", "--path", "{tmp}/images_background.zip", "--size", "1", "--out", "{tmp}/x"], "--size"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, omni, capsys, argv, message):
    with zipfile.ZipFile(tmp_path / "notomni.zip", "w") as z:
        z.writestr("readme.txt", "hello")
        z.writestr("a.png", b"not a png")
    rc, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert rc == 2
    assert err.startswith("varmem: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_episode_spec_in_show(tmp_path, omni, capsys):
    out = tmp_path / "om"
    run(["data", "build", "--source", "omniglot", "--path", omni[0], "--out", out, "--quiet"], capsys)
    rc, _, err = run(["data", "show", out, "--episode", "--ways", "50", "--out", tmp_path / "e.png"], capsys)
    assert rc == 2 and "asks for 50 classes" in err and "has 7" in err
    assert not (tmp_path / "e.png").exists()


def test_cli_process_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "varmem.cli", "data", "verify", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "nope does not exist" in proc.stderr


def test_lake_runs_build_keeps_official_pairing(tmp_path, capsys):
    labels = make_lake_runs(tmp_path / "all_runs.zip", runs=2, ways=20)
    out = tmp_path / "lake"
    rc, _, e = run(["data", "build", "--source", "lake-runs", "--path", tmp_path / "all_runs.zip", "--out", out], capsys)
    assert rc == 0, e
    runs = LakeRunEpisodes(out)
    assert len(runs) == 2
    for i, ep in enumerate(runs):
        assert ep.memory.shape == (20, 1, 26, 26) and ep.targets.shape == (20, 1, 26, 26)
        assert ep.memory_labels.tolist() == list(range(20))
        want = labels[i] if isinstance(labels, list) else labels[sorted(labels)[i]]
        assert ep.target_labels.tolist() == list(want)
        # the fixture's test item j is a copy of its class's training image
        assert all(np.array_equal(ep.targets[j], ep.memory[ep.target_labels[j]]) for j in range(20))
    rc, _, _ = run(["data", "show", out, "--episode", "--index", "1", "--out", tmp_path / "run.png"], capsys)
    assert rc == 0


def test_folder_source_build(tmp_path, capsys):
    make_folder_tree(tmp_path / "imgs", grouped=True, classes=3, images_per_class=4)
    out = tmp_path / "folder28"
    rc, _, e = run(["data", "build", "--source", "folder", "--path", tmp_path / "imgs", "--size", "28", "--out", out, "--quiet"], capsys)
    assert rc == 0, e
    ds = Dataset.open(out)
    assert ds.info()["splits"]["all"]["classes"] == 6 and ds.image_shape == (28, 28)
    assert ds.manifest["preprocessing"]["method"] == "resize"
