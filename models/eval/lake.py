"""Lake et al.'s 20 official 20-way 1-shot runs (a ``varmem data build --source lake-runs`` directory),
classified by every method the model supports and by the pixel baseline, with the runs as episodes
(within-alphabet 20-way 1-shot: humans 4.5% error, the modified-Hausdorff baseline 38.8%)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.sampler import EpisodeBatch, LakeRunEpisodes
from varmem.models.eval.capabilities import LIKELIHOOD, PIXEL, methods_for
from varmem.models.eval.classification import accuracy_on_batches, method_entry, require_method
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


def lake_runs_accuracy(model, dataset_dir: Dataset | str | Path, *, methods: Sequence[str] | None = None, samples: int = 10,
                       chunk: int = 100, seed: int = 0, binarize: str = "none", threshold: float = 0.5,
                       exact_address: bool = False, progress=None) -> dict[str, Any]:
    """Accuracy on the runs of ``dataset_dir``: ``{"dir", "runs", "ways", <method>: accuracy summary}``.

    ``methods``: default every method the model supports, and ``pixel``. Intervals as in
    :func:`varmem.models.eval.stats.accuracy_summary`, with the runs as episodes. ``binarize``:
    "none" or "static" (the runs are fixed images). ``progress``: a ``done(runs)`` callback,
    counting over the methods.
    """
    if methods is None:
        methods = [*(m for m, why in methods_for(model).items() if why is None), PIXEL]
    for m in methods:
        require_method(model, m)
    runs = lake_runs(model, dataset_dir, binarize=binarize, threshold=threshold)
    episodes = list(runs)
    out: dict[str, Any] = {"dir": str(runs.dataset.directory), "runs": len(episodes),
                           "ways": sorted({int(e.memory_labels.max()) + 1 for e in episodes})}
    for i, m in enumerate(methods):
        ties = torch.Generator().manual_seed(derive_seed(seed, f"lake/{m}", "ties"))
        done = None if progress is None else (lambda k, i=i: progress(i * len(episodes) + k))
        who = None if m == PIXEL else model
        with seeded(derive_seed(seed, f"lake/{m}"), device_of(who)):
            summary = accuracy_on_batches(who, (EpisodeBatch.stack([ep]) for ep in episodes), m, ties=ties,
                                          samples=samples, chunk=chunk, exact_address=exact_address, progress=done)
        out[m] = method_entry(model, m, **summary, **({"samples": samples} if m == LIKELIHOOD else {}))
    return out
