"""The Tune callback that signs a search's pickled state while the search runs (distributed/search/trust.py).

Its own module because it subclasses ``ray.tune.Callback`` (importing it imports Ray) and because Tune
pickles it by reference into ``tuner.pkl``: a restored search signs its state, too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from varmem.distributed.search.trust import StateSigner


class SignStateCallback(tune.Callback):
    """Signs the search's pickled state whenever Ray has rewritten it (looked at, at most once a second,
    at the end of each step of Tune's loop) and at the end of the experiment (:class:`StateSigner`)."""

    def __init__(self, search_dir: str | Path):
        self.signer = StateSigner(search_dir)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.signer.maybe_sign(search_dir_of(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.signer.maybe_sign(search_dir_of(trials), force=True)


def search_dir_of(trials: list) -> Path | None:
    """The search directory as Tune now sees it (a restored search may have moved since tuner.pkl was written);
    None for a search on object storage (the signer keeps its URI: Tune's path there has no scheme)."""
    import pyarrow.fs as pafs

    for trial in trials:
        storage = getattr(trial, "storage", None)
        path = getattr(storage, "experiment_fs_path", None)
        if path and isinstance(getattr(storage, "storage_filesystem", None), pafs.LocalFileSystem):
            return Path(path).parent
    return None
