"""Lake et al.'s official one-shot classification runs (``all_runs.zip``) as a source.

Layout: ``runNN/training/classKK.png`` (one image per class), ``runNN/test/itemMM.png`` (the
targets) and ``runNN/class_labels.txt``, either at the top of the zip or folder or below one top
folder (``all_runs/runNN/...``). Each line of ``class_labels.txt`` pairs a test item with its
true training class::

    run01/test/item01.png run01/training/class12.png

The ``runNN/`` prefix may be left out, the two may come in either order (the folder tells which
is which), blank lines are skipped. Validation: every test image is listed exactly once, every
training image is the class of at least one item, every listed file exists. The official
release has 20 runs of 20 classes and 20 items; other counts are accepted.

Class order is the sorted training file names (as in Lake's ``demo_classification.py``), so a
label is an index into :attr:`LakeRun.memory_names`; items are in sorted file-name order.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from varmem.episodes.errors import DataError
from varmem.episodes.sources.base import LakeRun
from varmem.episodes.sources.images import TreeReader, decode_grey, ink_high, list_tree

LAYOUT = "runNN/training/classKK.png, runNN/test/itemMM.png, runNN/class_labels.txt"
LABELS = "class_labels.txt"
_RUN = re.compile(r"run(\d+)")


class LakeRunsSource:
    """The 20 official 20-way 1-shot runs, with their official pairing."""

    name = "lake-runs"

    def __init__(self, path):
        tree = list_tree(path, f"Lake's all_runs.zip or its folder: {LAYOUT}")
        run_dirs = [d for d in tree.dirs if d.count("/") <= 1 and _RUN.fullmatch(PurePosixPath(d).name)]
        if not run_dirs:
            raise DataError(f"{tree.path}: no runNN folders; expected {LAYOUT} (at the top or below one folder)")
        parents = sorted({str(PurePosixPath(d).parent) for d in run_dirs})
        if len(parents) > 1:
            raise DataError(f"{tree.path}: runNN folders in several places ({', '.join(parents)}); expected one set of runs")
        self.path = str(tree.path)
        self.top = "" if parents[0] == "." else parents[0]
        self._reader = TreeReader(tree.path, tree.is_zip)
        files = set(tree.files)
        self._runs: list[dict[str, Any]] = []
        numbers: dict[int, str] = {}
        for d in sorted(run_dirs):
            number = int(_RUN.fullmatch(PurePosixPath(d).name).group(1))
            if number in numbers:
                raise DataError(f"{tree.where(d)}: run number {number} again (also {tree.where(numbers[number])})")
            numbers[number] = d
            self._runs.append(_parse_run(tree, files, self._reader, d, number))
        self._runs.sort(key=lambda r: r["run"])

    def options(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "top": self.top,
            "runs": len(self._runs),
            "ways": sorted({len(r["memory"]) for r in self._runs}),
            "targets_per_run": sorted({len(r["targets"]) for r in self._runs}),
        }

    def runs(self) -> list[LakeRun]:
        """Every run, by run number, with its images loaded (``uint8 [n, H0, W0]``, ink 255)."""
        return [self._load(r) for r in self._runs]

    def _load(self, run: dict[str, Any]) -> LakeRun:
        d = run["dir"]
        images, names = [], []
        for rel in run["memory"] + run["targets"]:
            where = self._reader.where(f"{d}/{rel}")
            images.append(ink_high(decode_grey(self._reader.read(f"{d}/{rel}"), where), "dark"))
            names.append(where)
        for img, name in zip(images, names):
            if img.shape != images[0].shape:
                raise DataError(
                    f"{name}: image is {img.shape[0]}x{img.shape[1]} (HxW) but {names[0]} of the same run is "
                    f"{images[0].shape[0]}x{images[0].shape[1]}; all images of a run must have one size"
                )
        n = len(run["memory"])
        prefix = PurePosixPath(d).name
        return LakeRun(
            run=run["run"],
            memory_names=tuple(f"{prefix}/{rel}" for rel in run["memory"]),
            target_names=tuple(f"{prefix}/{rel}" for rel in run["targets"]),
            target_labels=tuple(run["labels"]),
            memory=np.stack(images[:n]),  # [ways, H0, W0]
            targets=np.stack(images[n:]),  # [items, H0, W0]
        )


def _parse_run(tree, files: set[str], reader: TreeReader, d: str, number: int) -> dict[str, Any]:
    """Read and check one run's class_labels.txt against its training/ and test/ folders."""
    run_name = PurePosixPath(d).name
    labels_rel = f"{d}/{LABELS}"
    labels_where = tree.where(labels_rel)
    if labels_rel not in files:
        raise DataError(f"{labels_where}: missing; every run needs its {LABELS} ({LAYOUT})")
    listed = {sub: sorted(f[len(d) + len(sub) + 2:] for f in files
                          if f.startswith(f"{d}/{sub}/") and f.count("/") == d.count("/") + 2 and f.lower().endswith(".png"))
              for sub in ("training", "test")}
    for sub in ("training", "test"):
        if not listed[sub]:
            raise DataError(f"{tree.where(f'{d}/{sub}')}: no .png images; expected {LAYOUT}")
    try:
        text = reader.read(labels_rel).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{labels_where}: not a text file ({exc})") from exc

    expected = f"'{run_name}/test/itemMM.png {run_name}/training/classKK.png'"
    present = {sub: set(names) for sub, names in listed.items()}
    truth: dict[str, str] = {}  # test file -> training file
    line_of: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise DataError(f"{labels_where}:{lineno}: expected {expected}, got {line.strip()!r}")
        parsed = {}
        for token in tokens:
            parts = token.replace("\\", "/").split("/")
            parts = [p for p in parts if p not in ("", ".")]
            if len(parts) < 2 or parts[-2] not in ("test", "training"):
                raise DataError(f"{labels_where}:{lineno}: {token!r} is not a test/ or training/ file; expected {expected}")
            if len(parts) >= 3:
                m = _RUN.fullmatch(parts[-3])
                if m is None or int(m.group(1)) != number:
                    raise DataError(f"{labels_where}:{lineno}: {token!r} is not a file of {run_name}")
            parsed.setdefault(parts[-2], []).append(parts[-1])
        if set(parsed) != {"test", "training"}:
            raise DataError(f"{labels_where}:{lineno}: expected one test/ item and one training/ class, got {line.strip()!r}")
        item, cls = parsed["test"][0], parsed["training"][0]
        for sub, name in (("test", item), ("training", cls)):
            if name not in present[sub]:
                raise DataError(f"{labels_where}:{lineno}: {tree.where(f'{d}/{sub}/{name}')} does not exist (or is not a .png)")
        if item in truth:
            raise DataError(f"{labels_where}:{lineno}: test/{item} is listed again (first on line {line_of[item]})")
        truth[item] = cls
        line_of[item] = lineno
    if not truth:
        raise DataError(f"{labels_where}: no label lines; expected one line per test item, {expected}")
    for item in listed["test"]:
        if item not in truth:
            raise DataError(f"{tree.where(f'{d}/test/{item}')}: not listed in {labels_where}")
    used = set(truth.values())
    for cls in listed["training"]:
        if cls not in used:
            raise DataError(f"{tree.where(f'{d}/training/{cls}')}: not the class of any test item in {labels_where}")
    memory = listed["training"]
    index = {name: i for i, name in enumerate(memory)}
    targets = listed["test"]
    return {
        "run": number,
        "dir": d,
        "memory": [f"training/{m}" for m in memory],
        "targets": [f"test/{t}" for t in targets],
        "labels": [index[truth[t]] for t in targets],
    }


__all__ = ["LakeRunsSource"]
