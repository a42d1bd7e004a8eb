"""varmem: memory-augmented generative few-shot models, Triton kernels, Ray training.

One import name for the whole project: ``varmem.episodes`` (datasets and episodes),
``varmem.kernels`` (Triton kernels and their references), ``varmem.models`` (the model
families, their registry and evaluation), ``varmem.distributed`` (training, Ray Train and
Tune, the command line) and ``varmem.benchmarks``. In the repository those are the top-level
folders ``episodes/``, ``kernels/``, ``models/``, ``distributed/`` and ``benchmarks/``;
``setup.py`` maps them under this package, so nothing of varmem's is installed under a bare
top-level name (``distributed`` is Dask's, ``kernels`` another project's).

Run from a source checkout that is not installed (``ray job submit --working-dir .`` on a
cluster without varmem), this package finds the folders beside it.

Notebook API::

    import varmem
    run = varmem.load_run("runs/main_vma_strokes")   # the model in eval mode, its config (no dataset needed)
    run = varmem.load_run("s3://bucket/runs/vma")    # a run on object storage (credentials: AWS_* variables)
    x = run.sample(memory, 8, kind="mean")           # memory [M, 1, H, W] → [8, 1, H, W]
    ll = run.log_likelihood(memory, targets, 1000)   # [T] nats
    pred = run.classify(memory, memory_labels, targets)  # [T] int64
"""
from __future__ import annotations

import os as _os

__version__ = "0.1.0"

_SUBPACKAGES = ("episodes", "kernels", "models", "distributed", "benchmarks")


def _source_root() -> str | None:
    """The repository root when this package runs from a source checkout, else None."""
    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    if _os.path.isfile(_os.path.join(root, "setup.py")) and all(
        _os.path.isfile(_os.path.join(root, name, "__init__.py")) for name in _SUBPACKAGES
    ):
        return root
    return None


_root = _source_root()
if _root is not None and _root not in __path__:  # type: ignore[name-defined]  # noqa: F821
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821


def load_run(run_dir, *, checkpoint=None, device=None, data=None):
    """A trained run, ready for a notebook: see :func:`varmem.distributed.run.load_run` and
    :class:`varmem.distributed.run.LoadedRun` (``sample``, ``log_likelihood``, ``classify``). ``run_dir``,
    ``checkpoint`` and ``data`` may be URIs (``s3://``, ``gs://``, ``hdfs://``, ``file://``)."""
    from varmem.distributed.run import load_run as _load

    return _load(run_dir, checkpoint=checkpoint, device=device, data=data)


__all__ = ["load_run", "__version__"]
