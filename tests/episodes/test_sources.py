"""The omniglot, lake-runs and folder sources on small synthetic trees (and the real small1 zip if present)."""
from __future__ import annotations

import io
import multiprocessing
import pickle
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varmem.episodes.errors import DataError
from varmem.episodes.sources.folder import FolderSource
from varmem.episodes.sources.lake_runs import LakeRunsSource
from varmem.episodes.sources.omniglot import OmniglotSource
from tests.episodes.fixtures import (
    ink_mask,
    make_folder_tree,
    make_lake_runs,
    make_omniglot_dir,
    make_omniglot_zip,
    png_1bit,
)

REPO = Path(__file__).resolve().parents[2]
SMALL1 = next((p for p in (Path("/work/shared/data/omniglot/images_background_small1.zip"),
                           REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip") if p.exists()), None)


def load_all(source):
    return {(r.alphabet, r.character): source.load(r) for r in source.classes()}


def assert_same_arrays(got: dict, expected: dict):
    assert list(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == np.uint8 and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=str(k))


def zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ----------------------------------------------------------------------------------------- omniglot


@pytest.fixture
def bg_zip(tmp_path):
    path = tmp_path / "images_background.zip"
    return path, make_omniglot_zip(path, images_per_class=5)


def test_omniglot_zip_round_trip(bg_zip):
    path, expected = bg_zip
    src = OmniglotSource([path])
    recs = src.classes()
    assert [(r.alphabet, r.character) for r in recs] == [
        ("Alpha", "character01"), ("Alpha", "character02"), ("Alpha", "character03"),
        ("Beta", "character01"), ("Beta", "character02")]
    assert {r.release_split for r in recs} == {"background"}
    assert recs[0].image_names == ("0001_01.png", "0001_02.png", "0001_03.png", "0001_04.png", "0001_05.png")
    assert recs[3].image_names[0] == "0004_01.png"
    assert_same_arrays(load_all(src), expected)
    opts = src.options()
    assert opts["roots"][0] | {"path": None} == {
        "path": None, "top": "images_background", "release_split": "background", "alphabets": 2, "classes": 5,
        "images": 25, "images_per_class": {"5": 5}, "ignored_files": 0}


def test_omniglot_black_stroke_becomes_255(tmp_path):
    """The PNG stores ink as black (0); load gives 255 exactly there and 0 on the paper."""
    mask = np.zeros((105, 105), bool)
    mask[50, 10:90] = True  # one horizontal stroke
    zip_with(tmp_path / "images_background.zip", {"images_background/A/character01/0001_01.png": png_1bit(mask)})
    with Image.open(io.BytesIO(png_1bit(mask))) as img:
        assert img.mode == "1" and np.asarray(img.convert("L"))[50, 50] == 0
    src = OmniglotSource(tmp_path / "images_background.zip")
    x = src.load(src.classes()[0])
    assert x.shape == (1, 105, 105) and x.dtype == np.uint8
    assert (x[0][mask] == 255).all() and (x[0][~mask] == 0).all()


@pytest.mark.parametrize("form", ["top", "parent", "zip-no-top"])
def test_omniglot_zipped_and_unzipped_agree(tmp_path, bg_zip, form):
    path, expected = bg_zip
    if form == "zip-no-top":
        other = tmp_path / "images_background_copy.zip"
        make_omniglot_zip(other, images_per_class=5, top=None, dir_entries=False)
    else:
        make_omniglot_dir(tmp_path / "unzipped", images_per_class=5)
        other = tmp_path / "unzipped" / ("images_background" if form == "top" else "")
    a, b = OmniglotSource([path]), OmniglotSource([other])
    strip = [(r.alphabet, r.character, r.release_split, r.image_names) for r in a.classes()]
    assert strip == [(r.alphabet, r.character, r.release_split, r.image_names) for r in b.classes()]
    got_a, got_b = load_all(a), load_all(b)
    for k in got_a:
        np.testing.assert_array_equal(got_a[k], got_b[k])
    assert_same_arrays(got_b, expected)


def test_omniglot_several_paths_order_and_splits(tmp_path):
    make_omniglot_zip(tmp_path / "images_evaluation.zip", {"Tengwar": 1, "Atlantean": 2}, images_per_class=2,
                      top="images_evaluation")
    make_omniglot_dir(tmp_path / "d", {"Latin": 1, "Greek": 1}, images_per_class=2, top="images_background_small1")
    src = OmniglotSource([tmp_path / "images_evaluation.zip", tmp_path / "d"])
    assert [(r.release_split, r.alphabet, r.character) for r in src.classes()] == [
        ("background", "Greek", "character01"), ("background", "Latin", "character01"),
        ("evaluation", "Atlantean", "character01"), ("evaluation", "Atlantean", "character02"),
        ("evaluation", "Tengwar", "character01")]
    assert [r["release_split"] for r in src.options()["roots"]] == ["evaluation", "background"]


def test_omniglot_release_split_override(tmp_path):
    make_omniglot_zip(tmp_path / "my_chars.zip", {"Alpha": 1}, images_per_class=2, top="my_chars")
    make_omniglot_zip(tmp_path / "images_background.zip", {"Beta": 1}, images_per_class=2)
    with pytest.raises(DataError, match=r"my_chars.*release_split='background' or 'evaluation'"):
        OmniglotSource([tmp_path / "my_chars.zip"])
    forced = OmniglotSource([tmp_path / "my_chars.zip"], release_split="evaluation")
    assert forced.classes()[0].release_split == "evaluation" and forced.options()["release_split"] == "evaluation"
    per_path = OmniglotSource([tmp_path / "my_chars.zip", tmp_path / "images_background.zip"],
                              release_split=["evaluation", None])
    assert [(r.alphabet, r.release_split) for r in per_path.classes()] == [("Beta", "background"), ("Alpha", "evaluation")]
    with pytest.raises(DataError, match="one per path"):
        OmniglotSource([tmp_path / "my_chars.zip"], release_split=["evaluation", None])
    with pytest.raises(DataError, match="'test' is not one of"):
        OmniglotSource([tmp_path / "my_chars.zip"], release_split="test")


def test_omniglot_duplicate_classes(tmp_path):
    make_omniglot_zip(tmp_path / "images_background.zip", {"Alpha": 2}, images_per_class=2)
    make_omniglot_zip(tmp_path / "images_background_small1.zip", {"Alpha": 1}, images_per_class=2,
                      top="images_background_small1")
    with pytest.raises(DataError, match=r"Alpha/character01 is in both .*images_background\.zip.*images_background_small1"):
        OmniglotSource([tmp_path / "images_background.zip", tmp_path / "images_background_small1.zip"])


def test_omniglot_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.zip: no such file"):
        OmniglotSource([tmp_path / "nope.zip"])
    with pytest.raises(DataError, match="no path given"):
        OmniglotSource([])


@pytest.mark.parametrize("members, message", [
    ({"images_background/character01/0001_01.png": b""}, r"images_background\.zip::images_background/character01/"
                                                            r"0001_01\.png: not in the Omniglot layout.*no alphabet folders below images_background"),
    ({"character01/0001_01.png": b""}, r"images_background\.zip::character01/0001_01\.png: not in the Omniglot layout"
                                        r".*no alphabet folders"),
    ({"images_background/readme.txt": b"hi"}, r"images_background\.zip: no \.png images; expected the Omniglot layout"),
    ({"images_background/A/c1/x.png": b"", "images_background/A/c1/y/z.png": b""},
     r"images_background\.zip: images at different depths, e.g. .*A/c1/x\.png and .*A/c1/y/z\.png"),
    ({"images_background/A/c1/x.png": b"", "images_evaluation/A/c1/x.png": b""},
     r"images_background\.zip: holds several Omniglot folders \(images_background, images_evaluation\)"),
])
def test_omniglot_zip_not_in_layout(tmp_path, members, message):
    with pytest.raises(DataError, match=message):
        OmniglotSource([zip_with(tmp_path / "images_background.zip", members)])


def test_omniglot_not_a_zip(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"images_background\.zip: neither a directory nor a zip"):
        OmniglotSource([tmp_path / "images_background.zip"])


def test_omniglot_empty_class_folder(tmp_path):
    make_omniglot_dir(tmp_path, {"Alpha": 2}, images_per_class=2)
    (tmp_path / "images_background" / "Alpha" / "character03").mkdir()
    with pytest.raises(DataError, match=r"Alpha/character03: empty folder"):
        OmniglotSource([tmp_path])
    good = png_1bit(ink_mask(0))
    zip_path = zip_with(tmp_path / "images_background.zip", {
        "images_background/A/character01/0001_01.png": good, "images_background/A/character02/": b""})
    with pytest.raises(DataError, match=r"images_background\.zip::images_background/A/character02: empty folder"):
        OmniglotSource([zip_path])


def test_omniglot_corrupt_image_names_zip_member(tmp_path):
    good = png_1bit(ink_mask(0))
    zip_path = zip_with(tmp_path / "images_background.zip", {
        "images_background/A/character01/0001_01.png": good,
        "images_background/A/character01/0001_02.png": good[:60],  # truncated
    })
    src = OmniglotSource([zip_path])
    with pytest.raises(DataError, match=r"images_background\.zip::images_background/A/character01/0001_02\.png: "
                                        r"cannot decode"):
        src.load(src.classes()[0])


def test_omniglot_ignores_non_png_and_hidden(tmp_path):
    make_omniglot_dir(tmp_path, {"Alpha": 1}, images_per_class=2)
    char = tmp_path / "images_background" / "Alpha" / "character01"
    (char / "notes.txt").write_text("x")
    (char / ".DS_Store").write_bytes(b"x")
    (tmp_path / "images_background" / ".git").mkdir()
    (tmp_path / "images_background" / ".git" / "x.png").write_bytes(b"x")
    src = OmniglotSource([tmp_path / "images_background"])
    assert src.classes()[0].image_names == ("0001_01.png", "0001_02.png")
    assert src.options()["roots"][0]["ignored_files"] == 1


def test_omniglot_pickle_then_load(bg_zip):
    path, expected = bg_zip
    src = OmniglotSource([path])
    rec = src.classes()[2]
    src.load(rec)  # opens the zip in this process; the handle must not travel
    blob = pickle.dumps(src)
    assert b"ZipFile" not in blob
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.load(rec), expected[rec.alphabet, rec.character])


_INHERITED = None  # a source set before the fork, reached by the workers without pickling


def _load_sum(args):
    src, rec = args
    return int((src or _INHERITED).load(rec).astype(np.int64).sum())


@pytest.mark.parametrize("how", ["pickled", "inherited"])
def test_omniglot_process_pool(bg_zip, how):
    """Workers load from a pickled source, or from one forked with the parent's zip handle open
    (each must open its own: a forked handle shares its file offset with the parent)."""
    global _INHERITED
    path, expected = bg_zip
    src = OmniglotSource([path])
    recs = src.classes()
    src.load(recs[0])
    _INHERITED = src
    want = [int(expected[r.alphabet, r.character].astype(np.int64).sum()) for r in recs]
    try:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
            jobs = [(src if how == "pickled" else None, r) for r in recs] * 4
            assert list(pool.map(_load_sum, jobs)) == want * 4
    finally:
        _INHERITED = None


@pytest.mark.skipif(SMALL1 is None, reason="images_background_small1.zip is not in /work/shared/data/omniglot or ../shared")
def test_omniglot_real_small1():
    src = OmniglotSource([SMALL1])
    recs = src.classes()
    assert len({r.alphabet for r in recs}) == 5 and len(recs) == 136
    assert {r.release_split for r in recs} == {"background"}
    x = np.concatenate([src.load(r) for r in recs])
    assert x.shape == (2720, 105, 105) and x.dtype == np.uint8
    assert set(np.unique(x).tolist()) == {0, 255}
    ink = float((x == 255).mean())
    assert 0.03 < ink < 0.15, ink  # strokes on white paper: 7.6% ink
    assert (x[:, 0, :] == 0).mean() > 0.99  # the top row is paper


# ----------------------------------------------------------------------------------------- lake runs


def test_lake_runs_round_trip(tmp_path):
    labels = make_lake_runs(tmp_path / "all_runs.zip", runs=3, ways=20)
    src = LakeRunsSource(tmp_path / "all_runs.zip")
    runs = src.runs()
    assert [r.run for r in runs] == [1, 2, 3]
    for run, want in zip(runs, labels):
        assert run.memory.shape == (20, 105, 105) and run.targets.shape == (20, 105, 105)
        assert run.memory.dtype == np.uint8 and set(np.unique(run.memory).tolist()) == {0, 255}
        assert run.memory_names[0] == f"run{run.run:02d}/training/class01.png"
        assert run.target_names[-1] == f"run{run.run:02d}/test/item20.png"
        assert list(run.target_labels) == want
        for j, k in enumerate(run.target_labels):
            np.testing.assert_array_equal(run.targets[j], run.memory[k])
    assert src.options() | {"path": None} == {"path": None, "top": "", "runs": 3, "ways": [20], "targets_per_run": [20]}


def test_lake_runs_zip_folder_and_top_agree(tmp_path):
    make_lake_runs(tmp_path / "all_runs.zip", runs=2, ways=5)
    make_lake_runs(tmp_path / "folder", runs=2, ways=5)
    make_lake_runs(tmp_path / "with_top.zip", runs=2, ways=5, top="all_runs")
    a, b, c = (LakeRunsSource(p).runs() for p in (tmp_path / "all_runs.zip", tmp_path / "folder", tmp_path / "with_top.zip"))
    for ra, rb, rc in zip(a, b, c):
        assert ra.memory_names == rb.memory_names == rc.memory_names
        assert ra.target_labels == rb.target_labels == rc.target_labels
        np.testing.assert_array_equal(ra.memory, rb.memory)
        np.testing.assert_array_equal(ra.targets, rc.targets)


def test_lake_runs_black_stroke_becomes_255(tmp_path):
    make_lake_runs(tmp_path, runs=1, ways=3)
    mask = ink_mask(123)
    (tmp_path / "run01" / "training" / "class02.png").write_bytes(png_1bit(mask))
    run = LakeRunsSource(tmp_path).runs()[0]
    np.testing.assert_array_equal(run.memory[1], mask.astype(np.uint8) * 255)


def test_lake_runs_labels_parsed_robustly(tmp_path):
    labels = make_lake_runs(tmp_path, runs=1, ways=4)[0]
    lines = [f"training/class{k + 1:02d}.png \t test/item{j + 1:02d}.png" if j % 2 else
             f"  ./run01/test/item{j + 1:02d}.png   run01\\training\\class{k + 1:02d}.png  " for j, k in enumerate(labels)]
    (tmp_path / "run01" / "class_labels.txt").write_bytes(("\ufeff" + "\r\n\r\n".join(lines[::-1]) + "\r\n").encode())
    assert list(LakeRunsSource(tmp_path).runs()[0].target_labels) == labels


def _rewrite_labels(root: Path, edit):
    f = root / "run01" / "class_labels.txt"
    f.write_text(edit(f.read_text().splitlines()))


@pytest.mark.parametrize("edit, message", [
    (lambda ls: "\n".join([ls[0] + " extra"] + ls[1:]), r"run01/class_labels\.txt:1: expected 'run01/test/itemMM\.png"),
    (lambda ls: "\n".join(ls[:2] + [ls[0]] + ls[3:]), r"class_labels\.txt:3: test/item01\.png is listed again \(first on line 1\)"),
    (lambda ls: "\n".join(ls[:-1]), r"run01/test/item05\.png: not listed in .*run01/class_labels\.txt"),
    (lambda ls: "\n".join(ls[:4] + [ls[4].replace("item05", "item09")]), r"class_labels\.txt:5: .*run01/test/item09\.png does not exist"),
    (lambda ls: "\n".join([ls[0].replace("run01/training", "run02/training")] + ls[1:]), r"class_labels\.txt:1: .*is not a file of run01"),
    (lambda ls: "\n".join([ls[0].replace("training", "test")] + ls[1:]), r"class_labels\.txt:1: expected one test/ item and one training/ class"),
    (lambda ls: "\n".join([ls[0].split()[0] + " run01/train/class01.png"] + ls[1:]), r"class_labels\.txt:1: 'run01/train/class01\.png' is not a test/ or training/ file"),
    (lambda ls: "\n".join([ls[0].split()[0] + " " + ls[1].split()[1]] + ls[1:]), r"run01/training/class\d\d\.png: not the class of any test item"),
    (lambda ls: "\n\n", r"class_labels\.txt: no label lines"),
])
def test_lake_runs_bad_labels(tmp_path, edit, message):
    make_lake_runs(tmp_path, runs=2, ways=5)
    _rewrite_labels(tmp_path, edit)
    with pytest.raises(DataError, match=message):
        LakeRunsSource(tmp_path)


def test_lake_runs_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"all_runs\.zip: no such file"):
        LakeRunsSource(tmp_path / "all_runs.zip")
    make_lake_runs(tmp_path / "a", runs=2, ways=3)
    (tmp_path / "a" / "run02" / "class_labels.txt").unlink()
    with pytest.raises(DataError, match=r"a/run02/class_labels\.txt: missing"):
        LakeRunsSource(tmp_path / "a")
    make_lake_runs(tmp_path / "b", runs=1, ways=3)
    (tmp_path / "b" / "run01" / "training" / "class03.png").unlink()
    with pytest.raises(DataError, match=r"class_labels\.txt:\d: .*b/run01/training/class03\.png does not exist"):
        LakeRunsSource(tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"c: no runNN folders"):
        LakeRunsSource(tmp_path / "c")


def test_lake_runs_corrupt_image_and_pickle(tmp_path):
    make_lake_runs(tmp_path / "all_runs.zip", runs=1, ways=3)
    src = pickle.loads(pickle.dumps(LakeRunsSource(tmp_path / "all_runs.zip")))
    assert len(src.runs()) == 1
    with zipfile.ZipFile(tmp_path / "all_runs.zip", "a") as zf:
        zf.writestr("run02/training/class01.png", b"garbage")
        zf.writestr("run02/test/item01.png", png_1bit(ink_mask(1)))
        zf.writestr("run02/class_labels.txt", "run02/test/item01.png run02/training/class01.png\n")
    with pytest.raises(DataError, match=r"all_runs\.zip::run02/training/class01\.png: cannot decode"):
        LakeRunsSource(tmp_path / "all_runs.zip").runs()


# ----------------------------------------------------------------------------------------- folder


@pytest.mark.parametrize("grouped", [False, True])
def test_folder_layouts_round_trip(tmp_path, grouped):
    expected = make_folder_tree(tmp_path, grouped=grouped)
    src = FolderSource(tmp_path)
    recs = src.classes()
    assert [(r.alphabet, r.character) for r in recs] == sorted(expected)
    assert recs[0].image_names == ("img_000.png", "img_001.png", "img_002.png", "img_003.png")
    assert {r.release_split for r in recs} == {"all"}
    assert_same_arrays(load_all(src), expected)
    opts = src.options()
    assert opts["layout"] == ("grouped" if grouped else "flat") and opts["size"] == [32, 40]
    assert opts["ink"] == "dark" and opts["ink_requested"] == "auto" and opts["ink_light_border_share"] == 1.0


def test_folder_ink_auto_light_and_explicit(tmp_path):
    expected = make_folder_tree(tmp_path, ink="light", classes=2)
    src = FolderSource(tmp_path, release_split="evaluation")
    assert src.options()["ink"] == "light" and src.options()["ink_light_border_share"] == 0.0
    assert_same_arrays(load_all(src), expected)
    assert src.classes()[0].release_split == "evaluation"
    forced = FolderSource(tmp_path, ink="dark")  # wrong on purpose: paper becomes ink
    assert forced.options()["ink_light_border_share"] is None
    np.testing.assert_array_equal(forced.load(forced.classes()[0]), 255 - expected["", "class_00"])
    with pytest.raises(DataError, match="ink 'black' is not one of"):
        FolderSource(tmp_path, ink="black")


def test_folder_ink_ambiguous(tmp_path):
    make_folder_tree(tmp_path / "d", ink="dark", classes=1)
    make_folder_tree(tmp_path / "l", ink="light", classes=1)
    (tmp_path / "d" / "class_00").rename(tmp_path / "mix_a")
    (tmp_path / "l" / "class_00").rename(tmp_path / "mix_b")
    (tmp_path / "d").rmdir()
    (tmp_path / "l").rmdir()
    with pytest.raises(DataError, match=r"cannot tell the ink colour: 50% .*pass ink='dark'"):
        FolderSource(tmp_path)
    assert FolderSource(tmp_path, ink="light").options()["ink"] == "light"


def test_folder_formats_and_transparency(tmp_path):
    mask = ink_mask(7, (24, 24))
    grey = np.where(mask, 0, 255).astype(np.uint8)
    d = tmp_path / "cls"
    d.mkdir()
    for i, fmt in enumerate(["BMP", "GIF", "WEBP"]):
        Image.fromarray(grey).save(d / f"a{i}.{fmt}", format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    Image.fromarray(grey).convert("RGB").save(d / "a3.jpeg", quality=100)
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[mask, 3] = 255  # black ink drawn only in alpha, transparent paper
    Image.fromarray(rgba).save(d / "a4.Png")
    src = FolderSource(tmp_path)
    assert src.classes()[0].image_names == ("a0.BMP", "a1.GIF", "a2.WEBP", "a3.jpeg", "a4.Png")
    x = src.load(src.classes()[0])
    want = mask.astype(np.uint8) * 255
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(x[i], want, err_msg=src.classes()[0].image_names[i])
    assert np.abs(x[3].astype(int) - want).mean() < 8  # jpeg is lossy


def test_folder_layout_errors(tmp_path):
    make_folder_tree(tmp_path / "mixed", grouped=True, classes=1)
    make_folder_tree(tmp_path / "mixed" / "loose", classes=1)  # loose/class_00/img = depth 3 too: fine
    (tmp_path / "mixed" / "flat_class").mkdir()
    Image.fromarray(np.full((32, 40), 255, np.uint8)).save(tmp_path / "mixed" / "flat_class" / "x.png")
    with pytest.raises(DataError, match=r"image at depth 3 .* but .*mixed/flat_class/x\.png is at depth 2"):
        FolderSource(tmp_path / "mixed")

    make_folder_tree(tmp_path / "root_img", classes=1)
    Image.fromarray(np.full((32, 40), 255, np.uint8)).save(tmp_path / "root_img" / "stray.png")
    with pytest.raises(DataError, match=r"root_img/stray\.png: image directly in ROOT"):
        FolderSource(tmp_path / "root_img")

    make_folder_tree(tmp_path / "empty_cls", classes=1)
    (tmp_path / "empty_cls" / "class_99").mkdir()
    (tmp_path / "empty_cls" / "class_99" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty_cls/class_99: empty class folder \(no images; 1 other files\)"):
        FolderSource(tmp_path / "empty_cls")

    make_folder_tree(tmp_path / "empty_grp", grouped=True, classes=1)
    (tmp_path / "empty_grp" / "Zulu").mkdir()
    with pytest.raises(DataError, match=r"empty_grp/Zulu: empty group folder"):
        FolderSource(tmp_path / "empty_grp")

    (tmp_path / "nothing" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"nothing: no image files"):
        FolderSource(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"absent: no such file"):
        FolderSource(tmp_path / "absent")
    with pytest.raises(DataError, match=r"stray\.png: not a directory"):
        FolderSource(tmp_path / "root_img" / "stray.png")


def test_folder_ignores_other_files_and_hidden(tmp_path):
    make_folder_tree(tmp_path, classes=2, images_per_class=2)
    (tmp_path / "class_00" / "labels.csv").write_text("x")
    (tmp_path / "class_00" / "._img_000.png").write_bytes(b"junk")  # macOS resource fork: hidden
    (tmp_path / ".cache" / "deep" / "er").mkdir(parents=True)
    (tmp_path / ".cache" / "deep" / "er" / "a.png").write_bytes(b"junk")
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    src = FolderSource(tmp_path)
    assert [r.character for r in src.classes()] == ["class_00", "class_01"]
    assert src.classes()[0].image_names == ("img_000.png", "img_001.png")
    assert src.options()["ignored_files"] == 2 and src.options()["ignored_examples"] == ["Thumbs.db", "class_00/labels.csv"]


def test_folder_sizes_and_resize(tmp_path):
    make_folder_tree(tmp_path, classes=2, images_per_class=2, size=(32, 40))
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(tmp_path / "class_01" / "img_001.png")
    src = FolderSource(tmp_path)
    src.load(src.classes()[0])
    with pytest.raises(DataError, match=r"class_01/img_001\.png: image is 20x20 \(HxW\) but the dataset's first image "
                                        r".*class_00/img_000\.png is 32x40; .*resize_to"):
        src.load(src.classes()[1])
    resized = FolderSource(tmp_path, resize_to=(16, 16))
    x = resized.load(resized.classes()[1])
    assert x.shape == (2, 16, 16) and x[1].max() == 0 and x[0].max() > 200
    assert resized.options()["size"] == [16, 16]
    with pytest.raises(DataError, match="resize_to must be"):
        FolderSource(tmp_path, resize_to=(16, 0))


def test_folder_corrupt_image_and_pickle(tmp_path):
    expected = make_folder_tree(tmp_path, classes=2, images_per_class=2)
    src = pickle.loads(pickle.dumps(FolderSource(tmp_path)))
    rec = src.classes()[1]
    np.testing.assert_array_equal(src.load(rec), expected["", "class_01"])
    (tmp_path / "class_01" / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"class_01/img_001\.png: cannot decode the image"):
        src.load(rec)
