"""Hostile inputs against the ``varmem`` command line, and kills during training: the table of issue 10.

    python scripts/hostile_inputs.py [--out docs/hardening_results.json] [--only NAME,...] [--timeout 60]

Every case prepares its inputs in a temporary folder, runs one ``varmem`` command in a fresh
process and classifies what happened:

    clean      expected an error: exit 2, exactly one ``varmem: error:`` line, no traceback
               (or, where success is the right answer, exit 0 with no traceback)
    traceback  a Python traceback on stderr
    silent     exit 0 where the input must be refused (or the wrong outcome, e.g. a warning missing)
    hang       no exit within the timeout (killed)

Kills: a training run is SIGKILLed at several points (after its first checkpoint, mid-write of the
metrics, during validation), resumed with ``--resume``, and its final parameters are compared
with an uninterrupted run's, bit for bit.

Nothing here is a unit test: ``tests/`` keeps each case closed; this script re-runs the whole
catalogue as a user would meet it and writes the table (``--out`` JSON, and a Markdown table on
stdout). It builds a tiny strokes dataset and a 4-step run first (~30 s on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
VARMEM = [sys.executable, "-m", "varmem"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VARMEM_PROGRESS": "0", "PYTHONPATH": str(REPO)}


@dataclass
class Case:
    name: str
    category: str
    prepare: Callable[[Path, "Fixtures"], list[str]]  # → argv after `varmem`
    expect: str = "error"  # "error": a clean one-line refusal | "ok": success | "any": either, but clean
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None  # extra check → problem or None


@dataclass
class Fixtures:
    root: Path
    data: Path = field(init=False)
    run: Path = field(init=False)
    config: Path = field(init=False)
    eval_json: Path = field(init=False)


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run([*VARMEM, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=ENV, errors="replace")
    except subprocess.TimeoutExpired:
        return None


def classify(case: Case, proc: subprocess.CompletedProcess | None, work: Path) -> tuple[str, str]:
    if proc is None:
        return "hang", "no exit within the timeout"
    err = proc.stderr
    if "Traceback (most recent call last)" in err:
        return "traceback", err.strip().splitlines()[-1][:200]
    extra = case.check(work, proc) if case.check else None
    if extra:
        return "silent", extra
    lines = [l for l in err.splitlines() if l.startswith("varmem: error:")]
    # argparse's own refusals (usage, then "varmem CMD: error: ..."), exit 2: the standard form, clean too
    usage = [l for l in err.splitlines() if l.startswith("varmem ") and ": error: " in l]
    if proc.returncode == 2 and not lines and len(usage) == 1:
        lines = usage
    if proc.returncode == 2 and len(lines) == 1:
        return ("clean" if case.expect in ("error", "any") else "silent"), lines[0][:200]
    if proc.returncode == 0:
        return ("clean" if case.expect in ("ok", "any") else "silent"), "exit 0"
    return "traceback" if proc.returncode not in (0, 2) else "silent", f"exit {proc.returncode}: {err.strip()[-200:]}"


# --- fixtures -------------------------------------------------------------------------------------


def build_fixtures(root: Path, timeout: float) -> Fixtures:
    fx = Fixtures(root)
    fx.data = root / "data"
    proc = run(["data", "build", "--source", "strokes", "--classes", 60, "--images-per-class", 10, "--seed", 0,
                "--out", fx.data, "--quiet"], root, timeout)
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    raw = yaml.safe_load((REPO / "configs" / "smoke_tiny.yaml").read_text())
    raw["data"]["dir"] = str(fx.data)
    raw["train"].update(steps=4, log_every=2, val_every=4, checkpoint_every=2, val_episodes=2, val_samples=4)
    raw["run"]["out"] = str(root / "run")
    fx.config = root / "tiny.yaml"
    fx.config.write_text(yaml.safe_dump(raw))
    proc = run(["train", "--config", fx.config, "--quiet"], root, timeout)
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    fx.run = root / "run"
    fx.eval_json = root / "eval.json"
    proc = run(["eval", fx.run, "--samples", 4, "--episodes", 2, "--classification-episodes", 4, "--likelihood-episodes", 2,
                "--tasks", "5x1", "--tables", "examples", "--no-pictures", "--quiet", "--save", fx.eval_json], root, timeout)
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    return fx


def copy_data(fx: Fixtures, work: Path) -> Path:
    import shutil

    out = work / "data"
    shutil.copytree(fx.data, out)
    return out


def copy_run(fx: Fixtures, work: Path) -> Path:
    import shutil

    out = work / "run"
    shutil.copytree(fx.run, out)
    return out


def edit_manifest(work: Path, fx: Fixtures, edit: Callable[[dict], None]) -> Path:
    data = copy_data(fx, work)
    path = data / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return data


def manifest_case(name: str, edit: Callable[[dict], None], command: str = "verify") -> Case:
    return Case(name, "manifest", lambda w, fx: ["data", command, edit_manifest(w, fx, edit)])


def first_shard(m: dict) -> dict:
    return split0(m)["shards"][0]


def config_case(name: str, edit: Callable[[dict], None], category: str = "config") -> Case:
    def prepare(work: Path, fx: Fixtures) -> list[str]:
        raw = yaml.safe_load(fx.config.read_text())
        raw["run"]["out"] = str(work / "run")
        edit(raw)
        path = work / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        return ["train", "--config", path, "--quiet"]

    return Case(name, category, prepare)


def set_case(name: str, *sets: str) -> Case:
    def prepare(work: Path, fx: Fixtures) -> list[str]:
        return ["train", "--config", fx.config, "--out", work / "run", "--quiet", *sum((["--set", s] for s in sets), [])]

    return Case(name, "config", prepare)


def compare_case(name: str, edit: Callable[[dict], None] | None = None, target: str = "file", expect: str = "error",
                 check=None) -> Case:
    def prepare(work: Path, fx: Fixtures) -> list[str]:
        if target == "folder":
            return ["compare", f"a={work}", f"b={fx.eval_json}"]
        data = json.loads(fx.eval_json.read_text())
        edit(data)
        path = work / "e.json"
        path.write_text(json.dumps(data))
        return ["compare", f"a={fx.eval_json}", f"b={path}"]

    return Case(name, "compare", prepare, expect=expect, check=check)


def flip_byte(path: Path, offset_from_end: int = 200) -> None:
    raw = bytearray(path.read_bytes())
    i = max(0, len(raw) - offset_from_end)
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))


def newest_checkpoint(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1]


def resume_case(name: str, damage: Callable[[Path], None], expect: str = "ok", needs: str | None = None) -> Case:
    """Damage a copy of the finished run, then --resume it to 6 steps: it must recover (or refuse cleanly)."""

    def prepare(work: Path, fx: Fixtures) -> list[str]:
        run_dir = copy_run(fx, work)
        damage(run_dir)
        return ["train", "--resume", "--out", run_dir, "--steps", 6, "--quiet"]

    def check(work: Path, proc) -> str | None:
        if needs and needs not in proc.stderr + proc.stdout:
            return f"expected a message containing {needs!r}"
        return None

    return Case(name, "checkpoint", prepare, expect=expect, check=check)


def zip_with(path: Path, members: dict[str, bytes], compress=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name) if name.startswith("/") else name, data, compress_type=compress)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height (1-bit grey), with a tiny IDAT: a decompression bomb's header."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def small_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((105, 105)) > 0.5).astype("uint8") * 255).convert("1").save(buf, "PNG")
    return buf.getvalue()


def omniglot_zip(work: Path, names: list[str], extra: dict[str, bytes] | None = None) -> Path:
    png = small_png()
    return zip_with(work / "o.zip", {**{n: png for n in names}, **(extra or {})})


def build_zip_case(name: str, make: Callable[[Path], Path], expect: str = "error", category: str = "data build") -> Case:
    return Case(name, category, lambda w, fx: ["data", "build", "--source", "omniglot", "--path", make(w),
                                               "--out", w / "built", "--quiet"], expect=expect)


def malicious_search(work: Path, fx: Fixtures) -> list[str]:
    import pickle

    search = work / "search"
    (search / "tune").mkdir(parents=True)
    marker = work / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (search / "tune" / "tuner.pkl").write_bytes(pickle.dumps(Evil()))
    for name in ("search.json", "search_config.json"):
        (search / name).write_text("{}")
    return ["tune", "--resume", "--out", search, "--quiet"]


def no_marker(work: Path, proc) -> str | None:
    return "the pickle's code ran" if (work / "PWNED").exists() else None


# --- the catalogue --------------------------------------------------------------------------------

def cases() -> list[Case]:
    out: list[Case] = [
        # security
        Case("tune --resume of a search folder with a malicious tuner.pkl", "security", malicious_search, check=no_marker),
        set_case("--set model.factory=os:system", "model.factory=os:system"),
        config_case("config with model.factory", lambda r: r["model"].update(factory="os:system"), "security"),
        manifest_case("manifest shard file /etc/passwd", lambda m: first_shard(m).update(file="/etc/passwd")),
        manifest_case("manifest shard file /dev/zero", lambda m: first_shard(m).update(file="/dev/zero")),
        manifest_case("manifest shard file ../escape.arrow", lambda m: first_shard(m).update(file="../escape.arrow")),
        manifest_case("manifest shard file '.'", lambda m: first_shard(m).update(file=".")),
        # hangs and bombs in sources
        build_zip_case("omniglot zip with absolute member names", lambda w: omniglot_zip(
            w, [f"/x/images_background/Alpha/character{c:02d}/{i}.png" for c in range(3) for i in range(4)]), expect="any",
            category="hang"),
        build_zip_case("zip member of 2 GiB (deflated to ~2 MB)", lambda w: zip_bomb(w), category="resources"),
        build_zip_case("144-megapixel PNG", lambda w: omniglot_zip(
            w, [f"images_background/Alpha/character01/{i}.png" for i in range(3)],
            {"images_background/Alpha/character02/1.png": png_header_only(12000, 12000)}), category="resources"),
        # manifests
        manifest_case("manifest image_shape wrong", lambda m: m.update(image_shape=[30, 30])),
        manifest_case("manifest image_shape 'abc'", lambda m: m.update(image_shape="abc")),
        manifest_case("manifest splits as a list", lambda m: m.update(splits=[])),
        manifest_case("manifest shards null", lambda m: split0(m).update(shards=None)),
        manifest_case("manifest shard sha256 an integer", lambda m: first_shard(m).update(sha256=12345)),
        manifest_case("manifest shard file an integer", lambda m: first_shard(m).update(file=7)),
        manifest_case("manifest source without a name", lambda m: m.update(source={})),
        manifest_case("manifest one-element class_range", lambda m: first_shard(m).update(class_range=[0])),
        manifest_case("manifest negative class count", lambda m: split0(m).update(classes=-3)),
        manifest_case("manifest 1e30 class count", lambda m: split0(m).update(classes=10**30)),
        manifest_case("manifest image count a string", lambda m: split0(m).update(images="many")),
        Case("manifest not JSON", "manifest", lambda w, fx: ["data", "verify", garbage_manifest(w, fx)]),
        # integrity
        Case("a shard with one flipped byte, then train", "integrity", flipped_shard_train),
        resume_case("resume: newest checkpoint with a flipped byte", lambda r: flip_byte(newest_checkpoint(r)),
                    needs="checkpoint"),
        resume_case("resume: newest checkpoint truncated", lambda r: truncate(newest_checkpoint(r)), needs="checkpoint"),
        resume_case("resume: newest checkpoint empty", lambda r: newest_checkpoint(r).write_bytes(b""), needs="checkpoint"),
        resume_case("resume: every checkpoint corrupt", lambda r: [p.write_bytes(b"junk") for p in (r / "checkpoints").glob("*.pt")],
                    expect="error"),
        resume_case("resume: partial last line in metrics.jsonl",
                    lambda r: (r / "metrics.jsonl").write_text((r / "metrics.jsonl").read_text() + '{"kind": "tra')),
        Case("a stale .NAME.building-* folder of a killed build", "integrity", stale_building, expect="ok",
             check=lambda w, p: "stale folder left" if list(w.glob(".data2.building-*")) else None),
        # silent acceptance
        set_case("optim.eps=inf", "optim.eps=.inf"),
        set_case("optim.lr=nan", "optim.lr=.nan"),
        Case("--workers -3", "silent", lambda w, fx: ["train", "--config", fx.config, "--workers", -3, "--out", w / "r"]),
        Case("data show --split nope", "silent", lambda w, fx: ["data", "show", fx.data, "--split", "nope", "--out", w / "x.png"]),
        Case("build: a class with one image", "silent", one_image_class),
        compare_case("compare a folder", target="folder"),
        compare_case("compare: protocol a list", lambda d: d.update(protocol=[])),
        compare_case("compare: nll_vs_examples rows strings", lambda d: d["protocol"].update(nll_vs_examples=["x", "y"])),
        compare_case("compare: tampered nll_bound (a string)", lambda d: d.update(nll_bound="12")),
        compare_case("compare: infinite NLL printed as inf", lambda d: d["protocol"]["nll_vs_examples"][0].update(nll=float("inf")),
                     expect="any", check=lambda w, p: None if p.returncode == 2 or "inf" in p.stdout else "inf not printed"),
        Case("binary config file", "silent", lambda w, fx: ["train", "--config", binary_file(w), "--quiet"]),
        Case("binary Tune space file", "silent", lambda w, fx: ["tune", "--config", fx.config, "--space", binary_file(w),
                                                                "--out", w / "s", "--quiet"]),
        # ordinary bad input
        Case("train --config missing.yaml", "input", lambda w, fx: ["train", "--config", w / "missing.yaml"]),
        Case("train: config is a folder", "input", lambda w, fx: ["train", "--config", w]),
        set_case("--set with no '='", "train.steps"),
        set_case("--set unknown section", "nosection.x=1"),
        set_case("--set train.steps=abc", "train.steps=abc"),
        set_case("--set train.steps=0", "train.steps=0"),
        set_case("--set model.z_dim=-1", "model.z_dim=-1"),
        set_case("--set model.name=gan", "model.name=gan"),
        set_case("--set train.num_samples=1 (VMA needs 2)", "train.num_samples=1"),
        set_case("--set data.dir=/nonexistent", "data.dir=/nonexistent"),
        set_case("--set data.image_size=28 on 26×26 data", "data.image_size=28"),
        set_case("--set episode.train.shots=50 (more than the classes hold)", "episode.train.shots=50"),
        config_case("config: a list, not a mapping", lambda r: (r.clear(), None)),
        config_case("config: section model is a string", lambda r: r.update(model="vma")),
        Case("eval: not a run directory", "input", lambda w, fx: ["eval", w]),
        Case("eval: a run directory that is a file", "input", lambda w, fx: ["eval", fx.config]),
        Case("eval: a run with no checkpoint", "input", no_checkpoint_run),
        Case("eval --data of another image size", "input", eval_other_size),
        Case("eval --split nope", "input", lambda w, fx: ["eval", fx.run, "--split", "nope", "--samples", 2]),
        Case("eval --tasks 1x0", "input", lambda w, fx: ["eval", fx.run, "--tasks", "1x0"]),
        Case("data build --source nope", "input", lambda w, fx: ["data", "build", "--source", "nope", "--out", w / "d"]),
        Case("data build into an existing dataset without --overwrite", "input",
             lambda w, fx: ["data", "build", "--source", "strokes", "--classes", 10, "--out", copy_data(fx, w)]),
        Case("data verify of a missing folder", "input", lambda w, fx: ["data", "verify", w / "nope"]),
        Case("plot: no metrics.jsonl", "input", lambda w, fx: ["plot", w]),
        Case("plot --metrics nope", "input", lambda w, fx: ["plot", fx.run, "--metrics", "nope", "--out", w / "p.png"]),
        Case("tune: space with an unknown key", "input", bad_space),
        Case("compare: not JSON", "input", lambda w, fx: ["compare", f"a={binary_file(w)}"]),
        Case("train --plugin nope_module", "input", lambda w, fx: ["train", "--config", fx.config, "--plugin", "nope_module"]),
        Case("train --plugin missing.py", "input", lambda w, fx: ["train", "--config", fx.config, "--plugin", w / "missing.py"]),
    ]
    return out


def split0(m: dict) -> dict:
    splits = m["splits"]
    return next(iter(splits.values()))


def garbage_manifest(work: Path, fx: Fixtures) -> Path:
    data = copy_data(fx, work)
    (data / "manifest.json").write_bytes(b"\x00\xffnot json")
    return data


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def binary_file(work: Path) -> Path:
    path = work / "binary.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def zip_bomb(work: Path) -> Path:
    path = work / "bomb.zip"
    png = small_png()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"images_background/Alpha/character01/{i}.png", png)
        with z.open("images_background/Alpha/character02/1.png", "w", force_zip64=True) as member:
            block = b"\x00" * (1 << 20)
            for _ in range(2048):  # 2 GiB of zeros, ~2 MB deflated
                member.write(block)
    return path


def flipped_shard_train(work: Path, fx: Fixtures) -> list[str]:
    data = copy_data(fx, work)
    shard = sorted(data.glob("**/*.arrow"))[0]
    flip_byte(shard, offset_from_end=shard.stat().st_size // 2)
    raw = yaml.safe_load(fx.config.read_text())
    raw["data"]["dir"], raw["run"]["out"] = str(data), str(work / "run")
    path = work / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return ["train", "--config", path, "--quiet"]


def stale_building(work: Path, fx: Fixtures) -> list[str]:
    """A real killed build: SIGKILL `data build` once its hidden .NAME.building-* folder exists; the next
    build of the same name must remove it."""
    p = subprocess.Popen([*VARMEM, "data", "build", "--source", "strokes", "--classes", "3000", "--images-per-class", "20",
                          "--out", str(work / "data2"), "--quiet"], cwd=work, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(work.glob(".data2.building-*")) and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if not list(work.glob(".data2.building-*")):
        raise RuntimeError("the killed build left no building folder to clean up")
    return ["data", "build", "--source", "strokes", "--classes", 20, "--images-per-class", 4, "--out", work / "data2", "--quiet"]


def one_image_class(work: Path, fx: Fixtures) -> list[str]:
    png = small_png()
    root = work / "folder"
    for c in range(3):
        for i in range(1 if c == 0 else 4):
            p = root / f"class{c}" / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(png)
    return ["data", "build", "--source", "folder", "--path", root, "--out", work / "d", "--quiet"]


def no_checkpoint_run(work: Path, fx: Fixtures) -> list[str]:
    run_dir = copy_run(fx, work)
    for p in (run_dir / "checkpoints").glob("*"):
        p.unlink()
    return ["eval", run_dir, "--samples", 2]


def eval_other_size(work: Path, fx: Fixtures) -> list[str]:
    proc = run(["data", "build", "--source", "strokes", "--classes", 20, "--images-per-class", 4, "--size", 28,
                "--out", work / "d28", "--quiet"], work, 120)
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    return ["eval", fx.run, "--data", work / "d28", "--samples", 2]


def bad_space(work: Path, fx: Fixtures) -> list[str]:
    path = work / "space.yaml"
    path.write_text("optim.lr: {gird: [1, 2]}\n")
    return ["tune", "--config", fx.config, "--space", path, "--out", work / "s", "--quiet"]


# --- kills --------------------------------------------------------------------------------------


def kill_and_resume(fx: Fixtures, root: Path, timeout: float) -> list[dict]:
    """SIGKILL a 12-step run at several moments, resume it, compare its final parameters with an
    uninterrupted run's: bit-exact or not."""
    import torch

    raw = yaml.safe_load(fx.config.read_text())
    raw["train"].update(steps=80, log_every=5, val_every=40, checkpoint_every=5)
    results = []

    def config_for(out: Path) -> Path:
        r = json.loads(json.dumps(raw))
        r["run"]["out"] = str(out)
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(r))
        return path

    ref = root / "kill_ref"
    t0 = time.time()
    proc = run(["train", "--config", config_for(ref), "--quiet"], root, timeout)
    duration = time.time() - t0
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    ref_params = torch.load(newest_checkpoint(ref), weights_only=False)["model"]
    # kill points spread over the run (the first ~2 s are the interpreter and torch starting)
    for k, delay in enumerate(round(duration * f, 2) for f in (0.35, 0.5, 0.65, 0.8, 0.92)):
        out = root / f"kill_{k}"
        cfg = config_for(out)
        p = subprocess.Popen([*VARMEM, "train", "--config", str(cfg), "--quiet"], cwd=root, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait()
        have = sorted((out / "checkpoints").glob("ckpt-*.pt")) if (out / "checkpoints").is_dir() else []
        argv = ["train", "--resume", "--out", out, "--quiet"] if have else ["train", "--config", cfg, "--quiet", "--overwrite"]
        proc = run(argv, root, timeout)
        ok = proc is not None and proc.returncode == 0
        exact = False
        if ok:
            params = torch.load(newest_checkpoint(out), weights_only=False)["model"]
            exact = params.keys() == ref_params.keys() and all(torch.equal(params[n], ref_params[n]) for n in params)
        results.append({"kill_after_s": delay, "killed": killed, "checkpoints_at_kill": len(have),
                        "resumed": ok, "bit_exact": exact, "stderr": (proc.stderr.strip()[-200:] if proc else "hang")})
    return results


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--only", default=None, help="comma-separated substrings of case names to run")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a command counts as a hang")
    p.add_argument("--no-kills", action="store_true", help="skip the kill-and-resume runs")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="varmem-hostile-") as tmp:
        root = Path(tmp)
        t0 = time.time()
        fx = build_fixtures(root, args.timeout * 3)
        print(f"fixtures built in {time.time() - t0:.0f} s", file=sys.stderr)
        selected = [c for c in cases() if not args.only or any(s in c.name for s in args.only.split(","))]
        for i, case in enumerate(selected):
            work = root / f"case{i:03d}"
            work.mkdir()
            try:
                argv_case = case.prepare(work, fx)
            except Exception as exc:  # a broken case is the harness's bug: say so, do not count it
                rows.append({"case": case.name, "category": case.category, "outcome": "harness error", "detail": repr(exc)})
                continue
            t = time.time()
            proc = run(argv_case, work, args.timeout)
            outcome, detail = classify(case, proc, work)
            rows.append({"case": case.name, "category": case.category, "outcome": outcome, "detail": detail,
                         "seconds": round(time.time() - t, 1), "argv": " ".join(map(str, argv_case))[:300]})
            print(f"{outcome:10s} {case.name}: {detail[:120]}", file=sys.stderr)
        kills = [] if args.no_kills else kill_and_resume(fx, root, args.timeout * 3)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("clean", "traceback", "silent", "hang", "harness error")}
    print(f"\n| bad inputs tried | clean | traceback | silent | hang | kills survived (bit-exact) |")
    print("|---|---|---|---|---|---|")
    exact = sum(k["resumed"] and k["bit_exact"] for k in kills)
    print(f"| {len(rows)} | {counts['clean']} | {counts['traceback']} | {counts['silent']} | {counts['hang']} | "
          f"{exact} of {len(kills)} |")
    for r in rows:
        if r["outcome"] != "clean":
            print(f"- {r['outcome']}: {r['case']} — {r['detail']}")
    for k in kills:
        print(f"- kill after {k['kill_after_s']} s (killed: {k['killed']}, {k['checkpoints_at_kill']} checkpoints): "
              f"resumed {k['resumed']}, bit-exact {k['bit_exact']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps({"cases": rows, "counts": counts, "kills": kills}, indent=2) + "\n")
        os.replace(tmp_out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
