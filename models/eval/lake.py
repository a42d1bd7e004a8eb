"""Lake et al.'s 20 official 20-way 1-shot runs (a ``varmem data build --source lake-runs`` directory),
classified by every method the model supports and by the no-training baselines, with the runs as
episodes (within-alphabet 20-way 1-shot: humans 4.5% error; the modified-Hausdorff baseline 38.8% on
the 105×105 originals, Lake's ``demo_classification.py`` — here ``hausdorff_native`` on a lake-runs
build at ``--size 105``, ``hausdorff`` on the runs at the model's size)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.sampler import EpisodeBatch, LakeRunEpisodes
from varmem.models.eval.capabilities import (BASELINES, HAUSDORFF, HAUSDORFF_NATIVE, LIKELIHOOD, NO_NATIVE_RUNS, baselines,
                                             methods_for)
from varmem.models.eval.classification import accuracy_on_batches, hausdorff_label, method_entry, require_method
from varmem.models.eval.hausdorff import check_same_episodes
from varmem.models.eval.passes import derive_seed, device_of, seeded


def lake_runs(model, dataset_dir: Dataset | str | Path, *, binarize: str = "none", threshold: float = 0.5) -> LakeRunEpisodes:
    """The runs (iterate for their episodes); a DataError when their image size is not the model's."""
    runs = LakeRunEpisodes(dataset_dir, binarize=binarize, threshold=threshold)
    model_shape = getattr(model, "image_shape", None)
    data_shape = tuple(runs.dataset.image_shape)
    if model_shape is not None and tuple(model_shape) != data_shape:
        h, w = data_shape
        raise DataError(f"{runs.dataset.directory} holds {h}×{w} images but the model takes {tuple(model_shape)}: "
                        f"rebuild the runs with varmem data build --source lake-runs --size {model_shape[0]}")
    return runs


def native_lake_runs(runs: LakeRunEpisodes, native_dir: Dataset | str | Path, *, binarize: str = "none",
                     threshold: float = 0.5) -> LakeRunEpisodes:
    """The same runs at their original resolution (``native_dir``: a lake-runs build of the same zip at
    ``--size 105``); a DataError unless it holds the same images, pairing and order as ``runs``."""
    native = LakeRunEpisodes(native_dir, binarize=binarize, threshold=threshold)
    check_same_episodes(runs.dataset, native.dataset, what="--hausdorff-lake-runs")
    return native


def lake_runs_accuracy(model, dataset_dir: Dataset | str | Path, *, methods: Sequence[str] | None = None, samples: int = 10,
                       chunk: int = 100, seed: int = 0, binarize: str = "none", threshold: float = 0.5,
                       exact_address: bool = False, native: Dataset | str | Path | None = None,
                       progress=None) -> dict[str, Any]:
    """Accuracy on the runs of ``dataset_dir``: ``{"dir", "runs", "ways", <method>: accuracy summary}``.

    ``methods``: default every method the model supports (none when ``model`` is None) and the
    baselines (``hausdorff_native`` only with ``native``: the same runs built at their original
    resolution). Intervals as in :func:`varmem.models.eval.stats.accuracy_summary`, with the runs as
    episodes (Lake's figure is the mean error over the runs: 1 − this accuracy). ``binarize``:
    "none" or "static" (the runs are fixed images). ``progress``: a ``done(runs)`` callback,
    counting over the methods.
    """
    if methods is None:
        own = [m for m, why in methods_for(model).items() if why is None] if model is not None else []
        methods = [*own, *(m for m, why in baselines(native is not None).items() if why is None)]
    for m in methods:
        require_method(model, m, native=native is not None, no_native=NO_NATIVE_RUNS)
    runs = lake_runs(model, dataset_dir, binarize=binarize, threshold=threshold)
    episodes = list(runs)
    by_method = {m: episodes for m in methods}
    shapes = {m: tuple(runs.dataset.image_shape) for m in methods}
    if HAUSDORFF_NATIVE in methods:
        originals = native_lake_runs(runs, native, binarize=binarize, threshold=threshold)
        by_method[HAUSDORFF_NATIVE] = list(originals)
        shapes[HAUSDORFF_NATIVE] = tuple(originals.dataset.image_shape)
    out: dict[str, Any] = {"dir": str(runs.dataset.directory), "runs": len(episodes),
                           "ways": sorted({int(e.memory_labels.max()) + 1 for e in episodes})}
    for i, m in enumerate(methods):
        ties = torch.Generator().manual_seed(derive_seed(seed, f"lake/{m}", "ties"))
        done = None if progress is None else (lambda k, i=i: progress(i * len(episodes) + k))
        who = None if m in BASELINES else model
        with seeded(derive_seed(seed, f"lake/{m}"), device_of(who)):
            summary = accuracy_on_batches(who, (EpisodeBatch.stack([ep]) for ep in by_method[m]), m, ties=ties,
                                          samples=samples, chunk=chunk, exact_address=exact_address, progress=done)
        out[m] = method_entry(model, m, **summary, **({"samples": samples} if m == LIKELIHOOD else {}))
        if m in (HAUSDORFF, HAUSDORFF_NATIVE):
            out[m]["label"] = hausdorff_label(shapes[m])
    return out
