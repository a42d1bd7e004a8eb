"""The distribution: one import name, ``varmem``, and nothing under a bare top-level name.

``setup.py`` installs the top-level folders ``episodes/``, ``kernels/``, ``models/``,
``distributed/`` and ``benchmarks/`` as ``varmem.<folder>`` (``package_dir``). These tests build a
wheel from a copy of the source tree (in ``tmp_path``: nothing is written into the checkout) and

* check its file list: every module of the five folders and of ``varmem/`` is there, under
  ``varmem/``; nothing else is at the top level (``distributed`` is Dask's, ``kernels`` another
  project's); the ``varmem`` command is ``varmem.cli:main``;
* install it into a fresh venv beside ``dask[distributed]`` from the package index and import
  both in one process: ``distributed`` is Dask's, ``varmem.*`` the wheel's.

The second test needs the package index (``pip index versions distributed`` answers, else it is
skipped, saying why); torch, Ray, numpy... come from the project's own venv, whose site-packages
the fresh venv puts last on ``sys.path`` (a ``.pth`` file), so nothing large is installed.
About 1 s for the first test and 10 s for the second on 2 cores (PyPI reachable); pip's cache is ``tmp_path``.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("episodes", "kernels", "models", "distributed", "benchmarks")
VERSION = "0.1.0"


def _pip_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV", "PIP_USER"):
        env.pop(name, None)
    env["PIP_CACHE_DIR"] = str(cache)  # cache nothing outside tmp_path
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd, *, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def _source_modules() -> set[str]:
    """Every module the wheel must hold, as its path inside the wheel."""
    expected = {f"varmem/{p.name}" for p in (ROOT / "varmem").glob("*.py")}
    for top in SUBPACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"varmem/{top}/{path.relative_to(ROOT / top).as_posix()}")
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built, without build isolation, from a copy of the checkout (no build/ in the tree)."""
    base = tmp_path_factory.mktemp("packaging_wheel")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "results")
    for name in ("setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("varmem", *SUBPACKAGES):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = base / "dist"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src],
                cwd=base, env=_pip_env(base / "pip-cache"))
    _check(proc, "pip wheel")
    wheels = list(out.glob("varmem-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_every_module_under_varmem_only(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"varmem-{VERSION}.dist-info"
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split() if f"{dist_info}/top_level.txt" in names else None

    missing = sorted(_source_modules() - names)
    assert not missing, f"modules missing from the wheel (a folder without __init__.py?): {missing}"
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"varmem", dist_info}, f"unexpected top-level entries in the wheel: {sorted(tops)}"
    for bare in SUBPACKAGES:
        assert not any(n == bare or n.startswith(f"{bare}/") for n in names), f"a bare top-level {bare!r} in the wheel"
    if top_level is not None:
        assert top_level == ["varmem"], top_level

    ep = configparser.ConfigParser()
    ep.read_string(entry_points)
    assert dict(ep["console_scripts"]) == {"varmem": "varmem.cli:main"}


CHECK = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import distributed
    dask_file = distributed.__file__
    import varmem, varmem.distributed, varmem.models, varmem.kernels, varmem.episodes, varmem.benchmarks
    import varmem.distributed.cli
    failed = {}
    for info in pkgutil.walk_packages(varmem.__path__, "varmem."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # reported by the test with the module's name
            failed[info.name] = f"{type(exc).__name__}: {exc}"
    import torch
    json.dump({
        "dask_file": dask_file,
        "dask_file_after": sys.modules["distributed"].__file__,
        "dask_client": hasattr(distributed, "Client"),
        "varmem_path": list(varmem.__path__),
        "files": {m: sys.modules[m].__file__ for m in ("varmem", "varmem.distributed", "varmem.models",
                                                       "varmem.kernels", "varmem.episodes", "varmem.benchmarks",
                                                       "varmem.distributed.cli")},
        "bare": sorted(n for n in ("episodes", "kernels", "models", "benchmarks") if n in sys.modules),
        "failed": failed,
        "torch_file": torch.__file__,
        "sys_path": sys.path,
    }, sys.stdout)
    """
)


def test_fresh_venv_with_dask_distributed_imports_both(wheel, tmp_path):
    env = _pip_env(tmp_path / "pip-cache")
    # Is the package index reachable? (The machine's pip config may add local indexes that lack Dask.)
    probe = _run([sys.executable, "-m", "pip", "index", "versions", "distributed", "--timeout", "15", "--retries", "1"],
                 cwd=tmp_path, env=env, timeout=120)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the package index does not answer for 'distributed' (no network?): {reason}")

    venv = tmp_path / "venv"
    _check(_run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env), "python -m venv")
    py = venv / "bin" / "python"
    _check(_run([py, "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=tmp_path, env=env), "pip install the wheel")
    _check(_run([py, "-m", "pip", "install", "-q", "dask[distributed]"], cwd=tmp_path, env=env, timeout=600),
           "pip install dask[distributed]")

    fresh_sp = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path,
                         env=env).stdout.strip())
    main_sp = Path(sysconfig.get_paths()["purelib"])  # the project's venv: torch, ray, numpy, ...
    assert fresh_sp.is_dir() and fresh_sp != main_sp, (fresh_sp, main_sp)
    # appended after the fresh venv's own site-packages (PYTHONPATH would put it first); the .pth files
    # of the project's venv (its editable install of varmem) are not run for a directory added this way
    (fresh_sp / "zz_project_venv.pth").write_text(f"{main_sp}\n")

    check = tmp_path / "check" / "check.py"  # sys.path[0] is check/, which holds no varmem
    check.parent.mkdir()
    check.write_text(CHECK)
    proc = _run([py, check], cwd=tmp_path, env=env)
    _check(proc, "importing distributed and varmem in the fresh venv")
    got = json.loads(proc.stdout)

    where = f"\nsys.path: {got['sys_path']}"
    assert Path(got["dask_file"]).is_relative_to(fresh_sp / "distributed"), got["dask_file"] + where
    assert got["dask_file_after"] == got["dask_file"], "importing varmem replaced sys.modules['distributed']"
    assert got["dask_client"], "distributed.Client missing: not Dask's distributed"
    assert got["varmem_path"] == [str(fresh_sp / "varmem")], got["varmem_path"]
    for module, file in got["files"].items():
        assert Path(file).is_relative_to(fresh_sp / "varmem"), f"{module} from {file}, not the fresh venv" + where
        assert not Path(file).is_relative_to(ROOT), f"{module} from the checkout: {file}"
    assert got["bare"] == [], f"bare top-level modules imported: {got['bare']}"
    assert got["failed"] == {}, f"modules of the installed wheel that do not import: {got['failed']}"
    assert Path(got["torch_file"]).is_relative_to(main_sp), got["torch_file"]

    # the console script of the wheel
    proc = _run([venv / "bin" / "varmem", "--help"], cwd=tmp_path, env=env)
    _check(proc, "varmem --help from the fresh venv")
    assert "train" in proc.stdout and "data" in proc.stdout, proc.stdout
