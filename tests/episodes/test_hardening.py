"""Hostile and broken input to the data layer (issue 10, items 4, 5, 7, 8, 10, 11, 12, 14, 17): each
case as its reproduction, now a one-line DataError naming the file, field or value — never a
traceback, a hang or a silent success."""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from varmem.cli import build_parser, main
from varmem.episodes import build as build_module
from varmem.episodes import dataset as dataset_module
from varmem.episodes import stamps as stamps_module
from varmem.episodes.build import BUILDER_FILE, build_dataset, builder_record
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError, DiskFullError
from varmem.episodes.files import atomic_write, atomic_write_text
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.sources import images
from varmem.episodes.sources.images import decode_grey, list_tree
from varmem.episodes.spec import EpisodeSpec
from tests.episodes.fixtures import make_lake_runs, omniglot_files
from tests.episodes.tiny import TinySource

PRE26 = Preprocessing.default(26)


def build(tmp_path, source=None, name="ds", **kw):
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    build_dataset(source or TinySource(), tmp_path / name, preprocessing=PRE26, **kw)
    return tmp_path / name


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(rc, err, *needles):
    assert rc == 2, err
    assert err.startswith("varmem: error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def edit_manifest(directory: Path, edit) -> dict:
    path = directory / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    return m


def first_shard(directory: Path) -> Path:
    m = json.loads((directory / "manifest.json").read_text())
    return directory / m["splits"]["background"]["shards"][0]["file"]


# --- 4. shard paths stay inside the dataset folder and are regular files -------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("file, why", [("/etc/passwd", "an absolute path"), ("/dev/zero", "an absolute path"),
                                       ("../outside.arrow", "a path with '..'"), (".", "not a file name"),
                                       ("sub/../../x.arrow", "a path with '..'")])
def test_a_shard_path_out_of_the_folder_is_an_error_naming_the_entry(tmp_path, capsys, file, why):
    ds = build(tmp_path)
    edit_manifest(ds, lambda m: m["splits"]["background"]["shards"][0].__setitem__("file", file))
    for command in ("verify", "info"):
        rc, _, err = run(["data", command, ds], capsys)
        one_error_line(rc, err, "splits.background.shards[0].file", repr(file), why)
    with pytest.raises(DataError, match=r"splits.background.shards\[0\].file"):
        Dataset.open(ds, verify=False)


@pytest.mark.timeout(60)
def test_a_symlink_out_of_the_folder_or_a_fifo_is_refused_before_it_is_read(tmp_path, capsys):
    ds = build(tmp_path)
    shard = first_shard(ds)
    outside = tmp_path / "outside.arrow"
    shutil.copy(shard, outside)
    shard.unlink()
    shard.symlink_to(outside)  # the same bytes, but outside the folder
    rc, _, err = run(["data", "verify", ds], capsys)
    one_error_line(rc, err, "splits.background.shards[0].file", "outside the dataset folder")
    with pytest.raises(DataError, match="outside the dataset folder"):
        Dataset.open(ds)
    shard.unlink()
    os.symlink("/dev/zero", shard)  # hung `verify` before
    rc, _, err = run(["data", "verify", ds], capsys)
    one_error_line(rc, err, "outside the dataset folder")
    shard.unlink()
    os.mkfifo(shard)  # opening a FIFO waits for a writer
    rc, _, err = run(["data", "verify", ds], capsys)
    one_error_line(rc, err, shard.name, "a FIFO, not a regular file")
    with pytest.raises(DataError, match="a FIFO"):
        Dataset.open(ds)
    shard.unlink()
    os.symlink(outside.name, ds / "inside.arrow")  # a link inside the folder to a file inside is fine
    shutil.move(str(outside), ds / outside.name)
    os.symlink("inside.arrow", shard)
    assert run(["data", "verify", ds], capsys)[0] == 0


@pytest.mark.timeout(120)
def test_dev_zero_in_a_manifest_does_not_hang_the_cli_process(tmp_path):
    ds = build(tmp_path)
    edit_manifest(ds, lambda m: m["splits"]["background"]["shards"][0].__setitem__("file", "/dev/zero"))
    proc = subprocess.run([sys.executable, "-m", "varmem.cli", "data", "verify", str(ds)], capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "'/dev/zero', an absolute path" in proc.stderr


# --- 5. zips with absolute member names -----------------------------------------------------------
def _zip_with_absolute_names(path: Path, entries):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo("/x/" + name), data)  # ZipInfo keeps the leading "/"
    return path


@pytest.mark.timeout(60)
def test_absolute_zip_member_names_are_an_error_not_an_endless_loop(tmp_path, capsys):
    files, _ = omniglot_files({"A": 2}, images_per_class=3)
    omni = _zip_with_absolute_names(tmp_path / "images_background.zip", files)
    with zipfile.ZipFile(omni) as zf:
        assert zf.namelist()[0].startswith("/x/A/")
    rc, _, err = run(["data", "build", "--source", "omniglot", "--path", omni, "--out", tmp_path / "o", "--quiet"], capsys)
    one_error_line(rc, err, "::/x/A/", "member name is an absolute path")
    runs_dir = tmp_path / "runs"
    make_lake_runs(runs_dir, runs=1, ways=2)
    lake = _zip_with_absolute_names(tmp_path / "all_runs.zip", [(p.relative_to(runs_dir).as_posix(), p.read_bytes())
                                                                for p in sorted(runs_dir.rglob("*")) if p.is_file()])
    rc, _, err = run(["data", "build", "--source", "lake-runs", "--path", lake, "--out", tmp_path / "l"], capsys)
    one_error_line(rc, err, "::/x/run01/", "member name is an absolute path")
    dotdot = tmp_path / "dotdot.zip"
    with zipfile.ZipFile(dotdot, "w") as zf:
        zf.writestr(zipfile.ZipInfo("A/../../c1/1.png"), b"x")
    with pytest.raises(DataError, match=r"member name is a path with \.\."):
        list_tree(dotdot, "a test tree")
    assert not (tmp_path / "o").exists() and not (tmp_path / "l").exists()


# --- 7. shards are verified on open, cheaply ------------------------------------------------------
def flip_a_byte(path: Path, keep_mtime: bool = False) -> None:
    time.sleep(0.05)  # past the filesystem's timestamp tick (a few ms) since the last write or check
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def count_hashes(monkeypatch) -> list:
    calls = []
    real = dataset_module.sha256_file
    monkeypatch.setattr(dataset_module, "sha256_file", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    return calls


def test_a_flipped_byte_is_caught_when_a_dataset_is_opened_for_training(tmp_path):
    ds = build(tmp_path, shard_bytes=4 * 20 * 26 * 26)
    Dataset.open(ds)  # stamped by the build: opens without hashing
    shard = first_shard(ds)
    flip_a_byte(shard)
    spec = EpisodeSpec(split="train", ways=2, shots=2, targets=2)
    with pytest.raises(DataError, match=rf"{shard}: sha256 .* does not match the manifest's .*rebuild it .*"
                                        rf"`varmem data verify {ds}`"):
        EpisodeSampler(ds, spec)  # what training and evaluation open the dataset with
    with pytest.raises(DataError, match="does not match"):
        Dataset.open(ds)  # a failed shard is not stamped: it fails again
    flip_a_byte(shard, keep_mtime=True)  # flipped back, mtime restored: ctime still tells
    Dataset.open(ds)
    flip_a_byte(shard, keep_mtime=True)  # a write that puts the old mtime back is still seen (ctime)
    with pytest.raises(DataError, match="does not match"):
        Dataset.open(ds)


def test_verification_can_be_turned_off(tmp_path, monkeypatch):
    ds = build(tmp_path)
    flip_a_byte(first_shard(ds))
    assert Dataset.open(ds, verify=False).split("background").num_classes == 8
    monkeypatch.setenv("VARMEM_VERIFY_SHARDS", "0")
    Dataset.open(ds)
    EpisodeSampler(ds, EpisodeSpec(split="background", ways=2, shots=2, targets=2)).episode(0)
    with pytest.raises(DataError, match="sha256"):
        Dataset.open(ds, verify=True)  # the argument wins over the environment


def test_stamps_hash_each_shard_once_and_live_in_the_cache_when_the_folder_is_read_only(tmp_path, monkeypatch):
    ds = build(tmp_path, shard_bytes=4 * 20 * 26 * 26)
    hashed = count_hashes(monkeypatch)
    Dataset.open(ds)
    assert hashed == []  # the build stamped what it wrote
    (ds / stamps_module.STAMP_FILE).unlink()  # e.g. a dataset copied from an older varmem
    Dataset.open(ds)
    assert sorted(hashed) == sorted(p.name for p in ds.glob("*.arrow")) and len(hashed) == 3
    hashed.clear()
    Dataset.open(ds)
    assert hashed == []
    edit_manifest(ds, lambda m: m["splits"]["evaluation"]["shards"][0].__setitem__("class_range", [8, 12]))  # same value
    Dataset.open(ds)
    assert hashed == []
    # a folder it cannot write: the stamps go to the user's cache
    (ds / stamps_module.STAMP_FILE).unlink()
    (ds / "blocked").write_text("a file where a folder would be")
    monkeypatch.setattr(stamps_module, "STAMP_FILE", "blocked/.varmem-verified.json")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Dataset.open(ds)
    assert len(hashed) == 3 and len(list((tmp_path / "cache" / "varmem" / "verified").glob("*.json"))) == 1
    hashed.clear()
    Dataset.open(ds)
    assert hashed == []


def test_data_verify_hashes_everything_and_refreshes_the_stamps(tmp_path, monkeypatch, capsys):
    ds = build(tmp_path)
    hashed = count_hashes(monkeypatch)
    rc, out, _ = run(["data", "verify", ds, "--quiet"], capsys)
    assert rc == 0 and "ok: 2 shards match" in out and len(hashed) == 2
    (ds / stamps_module.STAMP_FILE).unlink()
    run(["data", "verify", ds, "--quiet"], capsys)
    hashed.clear()
    Dataset.open(ds)
    assert hashed == [] and (ds / stamps_module.STAMP_FILE).exists()
    rc, out, _ = run(["data", "info", ds], capsys)  # reads the manifest only
    assert rc == 0 and hashed == []


# --- 8. manifests: schema and consistency ---------------------------------------------------------
def _set(path, value):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


BG = ("splits", "background")
SHARD = BG + ("shards", 0)


@pytest.mark.parametrize("path, value, message", [
    (BG[:1], ["background", "evaluation"], "field 'splits' must be a mapping"),  # splits as a list
    (BG + ("shards",), None, "splits.background.shards must be a list"),  # shards: null
    (SHARD + ("class_range",), [0], "field 'splits.background.shards[0].class_range' is [0], expected [first class, end)"),
    (SHARD + ("sha256",), 12345, "splits.background.shards[0].sha256 is 12345, expected 64 lower-case hex digits"),
    (SHARD + ("file",), 7, "splits.background.shards[0].file is 7, expected a shard file name"),
    (("source", "name"), KeyError, "field 'source.name' must be a non-empty string, got None"),  # source without a name
    (SHARD + ("file",), ".", "splits.background.shards[0].file is '.', not a file name"),
    (("image_shape",), "abc", "field 'image_shape' is 'abc', expected [height, width]"),
    (("image_shape",), [26, "26"], "field 'image_shape[1]' must be an integer, got '26'"),
    (BG + ("classes",), -8, "field 'splits.background.classes' is -8, expected an integer in [0,"),
    (BG + ("classes",), 10 ** 30, "field 'splits.background.classes' is 1000000000000000000000000000000, expected an integer"),
    (BG + ("images",), "160", "field 'splits.background.images' must be an integer, got '160'"),
    (BG + ("images",), 170, "splits.background.images is 170 but its shards' rows add up to 160"),
    (BG + ("class_range",), [0, 9], "splits.background.classes is 8 but splits.background.class_range [0, 9) holds 9"),
    (SHARD + ("bytes",), 100, "shards[0].bytes is 100 but 160 rows of 26×26 uint8 images take 108160"),
    (("image_shape",), [28, 28], "shards[0].bytes is"),  # a wrong image_shape contradicts the shard's size
    (("splits", "evaluation", "class_range"), [4, 8], "overlap; every class belongs to one split"),
    (("roles",), {"train": ["background"]}, "roles.train must be a split name"),
    (("kind",), ["classes"], "field 'kind' is ['classes']"),
])
def test_malformed_manifests_are_one_error_naming_the_field(tmp_path, capsys, path, value, message):
    ds = build(tmp_path)
    edit_manifest(ds, _set(path, value))
    if path == ("splits", "evaluation", "class_range"):
        edit_manifest(ds, _set(("splits", "evaluation", "shards", 0, "class_range"), [4, 8]))
    for command in ("verify", "info"):
        rc, _, err = run(["data", command, ds], capsys)
        one_error_line(rc, err, str(ds / "manifest.json"), message)


def test_a_wrong_image_shape_of_the_same_size_is_caught_by_verify_and_open(tmp_path, capsys):
    ds = build(tmp_path)
    edit_manifest(ds, _set(("image_shape",), [13, 52]))  # 13·52 = 26·26: the byte counts still agree
    rc, _, err = run(["data", "verify", ds], capsys)
    assert rc == 1 and "image_shape [13, 52] does not match the shard's 26,26" in err, err
    with pytest.raises(DataError, match=r"image_shape \[13, 52\] does not match"):
        Dataset.open(ds)


def test_manifest_json_that_is_not_a_regular_file_or_too_large(tmp_path, capsys):
    ds = build(tmp_path)
    (ds / "manifest.json").unlink()
    os.mkfifo(ds / "manifest.json")
    rc, _, err = run(["data", "info", ds], capsys)
    one_error_line(rc, err, "manifest.json is not a regular file")
    (ds / "manifest.json").unlink()
    (ds / "manifest.json").write_text('{"schema": "varmem.dataset", "schema_version": 1, "x": ' + "9" * 5000 + "}")
    rc, _, err = run(["data", "info", ds], capsys)
    one_error_line(rc, err, "not readable JSON")


# --- 10. stale building folders of killed builds ---------------------------------------------------
def _building(tmp_path: Path, name: str, record: dict | None, age_s: float = 0) -> Path:
    folder = tmp_path / f".ds.building-{name}"
    folder.mkdir()
    (folder / "background-00000.arrow").write_bytes(b"partial")
    if record is not None:
        (folder / BUILDER_FILE).write_text(json.dumps(record))
    if age_s:
        t = time.time() - age_s
        os.utime(folder, (t, t))
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_build_removes_the_building_folders_of_killed_builds_only(tmp_path, capsys):
    dead = _dead_pid()
    me = builder_record()
    stale = _building(tmp_path, f"{dead}-aaaaaa", {**me, "pid": dead})
    reused = _building(tmp_path, f"{os.getpid()}-bbbbbb", {**me, "start": "1"})  # our pid, another start time
    live = _building(tmp_path, f"{os.getpid()}-cccccc", me)
    remote = _building(tmp_path, f"{dead}-dddddd", {**me, "pid": dead, "host": socket.gethostname() + "-elsewhere"})
    old_legacy = _building(tmp_path, f"{dead}-eeeeee", None, age_s=2 * build_module.LEGACY_STALE_AFTER_S)
    new_legacy = _building(tmp_path, f"{dead}-ffffff", None)
    other_name = tmp_path / f".dsx.building-{dead}-gggggg"
    other_name.mkdir()
    (other_name / BUILDER_FILE).write_text(json.dumps({**me, "pid": dead}))
    rc, _, err = run(["data", "build", "--source", "strokes", "--classes", "6", "--images-per-class", "8",
                      "--workers", "1", "--quiet", "--out", tmp_path / "ds"], capsys)
    assert rc == 0, err
    assert not stale.exists() and not reused.exists() and not old_legacy.exists()
    assert live.exists() and remote.exists() and new_legacy.exists() and other_name.exists()
    assert f"removed {stale}, left by a killed build (pid {dead} on {socket.gethostname()} is gone)" in err
    assert not (tmp_path / "ds" / BUILDER_FILE).exists()


@pytest.mark.timeout(120)
def test_a_really_killed_build_is_cleaned_up_by_the_next_one(tmp_path, capsys):
    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
              "from tests.episodes.tiny import TinySource\n"
              "from varmem.episodes.build import build_dataset\n"
              "from varmem.episodes.preprocess import Preprocessing\n"
              "class Slow(TinySource):\n"
              "    def load(self, record):\n"
              "        time.sleep(60)\n"
              f"build_dataset(Slow(), {str(tmp_path / 'ds')!r}, preprocessing=Preprocessing.default(26), workers=1, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 90
        while not list(tmp_path.glob(f".ds.building-{proc.pid}-*/{BUILDER_FILE}")) and time.time() < deadline:
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    left = list(tmp_path.glob(".ds.building-*"))
    assert len(left) == 1  # what a killed build leaves
    rc, _, err = run(["data", "build", "--source", "strokes", "--classes", "6", "--images-per-class", "8",
                      "--workers", "1", "--quiet", "--out", tmp_path / "ds"], capsys)
    assert rc == 0 and f"removed {left[0]}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# --- 11. a full disk ------------------------------------------------------------------------------
def test_a_full_disk_during_a_build_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def full(path, *a, **k):
        Path(path).write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(build_module, "write_shard", full)
    rc, _, err = run(["data", "build", "--source", "strokes", "--classes", "6", "--images-per-class", "8",
                      "--workers", "1", "--quiet", "--out", tmp_path / "ds"], capsys)
    one_error_line(rc, err, f"{tmp_path / 'ds'}: no space left on device while building the dataset",
                   "needs about 37.1 kB", "free there now", "free some space")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(build_module, "write_shard", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EDQUOT, "quota")))
    with pytest.raises(DiskFullError, match="disk quota exceeded"):
        build(tmp_path)


def test_atomic_write_turns_a_full_disk_into_one_line(tmp_path, capsys):
    def half_then_full(f):
        f.write(b"x" * 5000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=rf"{tmp_path / 'ckpt.pt'}: no space left on device while writing "
                                            r"\(needs more than 5.0 kB, .* free there now\)"):
        atomic_write(tmp_path / "ckpt.pt", half_then_full)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone

    def torch_style(f):  # torch.save reports the failed write as a RuntimeError raised while handling it
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    with pytest.raises(DiskFullError, match="needs more space"):
        atomic_write(tmp_path / "ckpt.pt", torch_style)
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through unchanged
        atomic_write(tmp_path / "x", lambda f: (_ for _ in ()).throw(RuntimeError("unrelated")))
    atomic_write_text(tmp_path / "ok.txt", "fine")
    assert (tmp_path / "ok.txt").read_text() == "fine"


# --- 12. huge zip members and images are refused before they are read ---------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit PNG that claims ``width × height`` pixels: signature, IHDR, one tiny IDAT, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def test_a_144_megapixel_png_is_refused_from_its_header(tmp_path):
    data = _png_header_only(12000, 12000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"big.png: the image has 144,000,000 pixels, more than varmem "
                                            r"decodes \(16,777,216, varmem.episodes.sources.images.MAX_IMAGE_PIXELS\)"):
            decode_grey(data, "big.png")
        with pytest.raises(DataError, match=r"the image has 144,000,000 pixels"):
            images.image_size(data, "big.png")
        # between the limit and twice it, Pillow opens it and varmem refuses it from the header
        with pytest.raises(DataError, match=r"the image has 25,000,000 pixels \(5000×5000\), more than varmem decodes"):
            decode_grey(_png_header_only(5000, 5000), "big.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20
    assert images.Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS


def test_a_zip_member_over_the_limit_is_refused_before_it_is_inflated(tmp_path, capsys, monkeypatch):
    files, _ = omniglot_files({"A": 2}, images_per_class=3)
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(f"images_background/{name}", data)
        zf.writestr("images_background/A/character01/0001_99.png", b"\0" * (65 << 20))  # 65 MiB → 65 kB compressed
    assert path.stat().st_size < 1 << 20
    member = "images_background/A/character01/0001_99.png"
    reader = images.TreeReader(path, True)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"::{member}: 68,157,440 bytes, more than an image file may be "
                                            r"\(67,108,864 bytes, varmem.episodes.sources.images.MAX_FILE_BYTES\)"):
            reader.read(member)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20  # not inflated
    rc, _, err = run(["data", "build", "--source", "omniglot", "--path", path, "--out", tmp_path / "o", "--workers", "1",
                      "--quiet"], capsys)
    one_error_line(rc, err, member, "more than an image file may be")
    big = tmp_path / "folder" / "c1" / "huge.png"
    big.parent.mkdir(parents=True)
    big.write_bytes(_png_header_only(12000, 12000))
    (big.parent / "ok.png").write_bytes(files[0][1])
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 10)
    with pytest.raises(DataError, match=r"huge.png: \d+ bytes, more than an image file may be \(10 bytes"):
        images.TreeReader(tmp_path / "folder", False).read("c1/huge.png")


# --- 14. data show --split, classes too small for an episode --------------------------------------
def test_show_with_an_unknown_split_lists_the_splits_and_roles(tmp_path, capsys):
    ds = build(tmp_path)
    rc, _, err = run(["data", "show", ds, "--split", "nope", "--out", tmp_path / "x.png"], capsys)
    one_error_line(rc, err, "no split 'nope'; this dataset has 'background', 'evaluation'",
                   "roles train → 'background', eval → 'evaluation'")
    assert not (tmp_path / "x.png").exists()
    assert run(["data", "show", ds, "--split", "eval", "--out", tmp_path / "x.png"], capsys)[0] == 0


def test_a_class_with_one_image_is_refused_at_build(tmp_path, capsys):
    with pytest.raises(DataError, match=r"tiny class alpha0/character01: 1 image; every class needs at least 2 \(an "
                                        r"episode takes 1 shot \+ 1 target per class; the default episode, 4 shots \+ "
                                        r"4 targets, takes 8\)"):
        build(tmp_path, TinySource(counts={1: 1}))
    rc, _, err = run(["data", "build", "--source", "strokes", "--classes", "6", "--images-per-class", "1",
                      "--out", tmp_path / "s", "--quiet"], capsys)
    one_error_line(rc, err, "1 image; every class needs at least 2")
    assert list(tmp_path.iterdir()) == []
    rc, out, _ = run(["data", "build", "--source", "strokes", "--classes", "6", "--images-per-class", "3",
                      "--out", tmp_path / "s", "--quiet", "--workers", "1"], capsys)
    assert rc == 0 and "note: split 'background': its smallest class has 3 images; the default episode (4 shots + " \
                       "4 targets per class) takes 8" in out


# --- 17. --help of every data subcommand -----------------------------------------------------------
def _data_subparsers() -> dict[str, argparse.ArgumentParser]:
    root = build_parser()
    data = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    return {"data": data, **next(a for a in data._actions if isinstance(a, argparse._SubParsersAction)).choices}


@pytest.mark.parametrize("name", ["data", "build", "info", "verify", "show"])
def test_data_help_shows_every_option_with_help_and_no_useless_defaults(name, capsys):
    parser = _data_subparsers()[name]
    argv = ["data"] + ([] if name == "data" else [name]) + ["--help"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        shown = formatter._expand_help(action) if action.help else ""
        assert shown.count("(default:") <= 1 and "default: None" not in shown, (name, action.dest, shown)
        if action.required:
            assert "(default:" not in shown, (name, action.dest, shown)
    if name == "build":
        flat = " ".join(text.split())
        assert "processes that load and preprocess (default: all cores, at most 8)" in flat
        assert "--out OUT dataset directory to create" in flat
        assert "number of character classes (default: 1000)" in flat
        assert "seed of the character programs and their images (default: 0)" in flat  # a default of 0 is shown
        assert "4 shots + 4 targets, takes 8) (default: 20)" in flat
