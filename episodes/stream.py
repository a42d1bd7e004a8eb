"""Per-worker episode streams with background prefetch and checkpointable state.

Rank ``r`` of ``W`` at step ``s`` takes the ``batch`` episodes with global indices::

    (s · W + r) · batch + j,   j = 0 .. batch − 1

so the ranks' streams are disjoint, deterministic, keyed by (seed, rank, step), and the union
over ranks at step ``s`` is exactly what one process with ``W · batch`` episodes per step sees.
The state (seed, step, rank, world size, batch, spec) is small and goes into checkpoints; a
stream restored from it continues with the same episodes.

Inside a Ray Train worker, :meth:`EpisodeStream.for_train_worker` reads the rank and world
size from ``ray.train.get_context()`` and memory-maps the shards in that worker (zero-copy):
every worker samples for itself, nothing passes through the driver.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from typing import Any

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.sampler import EpisodeBatch, EpisodeSampler
from varmem.episodes.spec import EpisodeSpec


class EpisodeStream:
    """An iterator of :class:`EpisodeBatch` for one rank, prefetched by a background thread."""

    def __init__(
        self,
        dataset: Dataset | str,
        spec: EpisodeSpec,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batch: int = 1,
        step: int = 0,
        prefetch: int = 4,
        pin_memory: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch < 1:
            raise DataError(f"episodes per step (batch) must be ≥ 1, got {batch}")
        if step < 0:
            raise DataError(f"step must be ≥ 0, got {step}")
        self.sampler = EpisodeSampler(dataset, spec, seed)
        spec = self.sampler.spec  # its split resolved (a role names the dataset's split)
        self.spec, self.seed, self.rank, self.world_size, self.batch = spec, int(seed), rank, world_size, batch
        self.step = step  # the next step __next__ returns
        self.prefetch = max(0, prefetch)
        self.pin_memory = pin_memory  # pin batches in the producer so .to(cuda, non_blocking=True) overlaps
        self.wait_seconds = 0.0  # time __next__ spent blocked on the prefetch queue
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def for_train_worker(cls, dataset: Dataset | str, spec: EpisodeSpec, **kwargs: Any) -> "EpisodeStream":
        """The stream of the calling Ray Train worker (its world rank and size from the train context)."""
        import ray.train

        ctx = ray.train.get_context()
        return cls(dataset, spec, rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), **kwargs)

    # --- the pure part ------------------------------------------------------------------------
    def indices(self, step: int) -> range:
        """Global episode indices of this rank's batch at ``step``."""
        first = (step * self.world_size + self.rank) * self.batch
        return range(first, first + self.batch)

    def make(self, step: int) -> EpisodeBatch:
        batch = self.sampler.batch(self.indices(step))
        if self.pin_memory:
            batch = EpisodeBatch(**{k: v.pin_memory() for k, v in vars(batch).items()})
        return batch

    # --- iteration with prefetch --------------------------------------------------------------
    def __iter__(self) -> "EpisodeStream":
        return self

    def __next__(self) -> EpisodeBatch:
        if self.prefetch == 0:
            out = self.make(self.step)
        else:
            if self._thread is None:
                self._start()
            t0 = time.perf_counter()
            step, out = self._queue.get()  # type: ignore[union-attr]
            self.wait_seconds += time.perf_counter() - t0
            if isinstance(out, BaseException):
                self.close()
                raise out
            assert step == self.step, (step, self.step)
        self.step += 1
        return out

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(self.step, self._queue, self._stop), daemon=True, name="episode-prefetch")
        self._thread.start()

    def _produce(self, step: int, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = self.make(step)
            except BaseException as exc:  # surfaced to the consumer
                item = exc
            while not stop.is_set():
                try:
                    q.put((step, item), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    def close(self) -> None:
        """Stop the prefetch thread (a later ``next`` restarts it from the current step)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread, self._queue = None, None

    def __enter__(self) -> "EpisodeStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; daemon threads die with the process anyway
        try:
            self.close()
        except Exception:
            pass

    # --- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "step": self.step,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch": self.batch,
            "spec": self.spec.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpointed state (same seed, spec and batch; rank/world may be ours)."""
        for key in ("seed", "batch"):
            if state[key] != getattr(self, key):
                raise DataError(f"episode stream state has {key}={state[key]!r}, this stream has {getattr(self, key)!r}")
        saved = EpisodeSpec.from_dict(state["spec"])
        if replace(saved, split=self.sampler.dataset.resolve_split(saved.split)) != self.spec:
            raise DataError("episode stream state was saved with a different episode spec")
        if state["world_size"] != self.world_size:
            raise DataError(
                f"episode stream state was saved with world_size={state['world_size']}, resuming with {self.world_size}: "
                "the episodes would differ"
            )
        self.close()
        self.step = int(state["step"])
