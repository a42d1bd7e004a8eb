"""The Ray cluster a command runs on: one way to join or start it, and the check that it can hold a launch.

``varmem train --workers N`` (distributed/ray_train.py) and ``varmem tune`` (distributed/search/)
both connect through :func:`connected` (a ``with`` block around :func:`connect`): ``--address``
(``host:port`` or ``auto``), else ``RAY_ADDRESS`` (which a ``ray job submit`` driver has), else a
private cluster started on this machine for the command and stopped at its end. A ``host:port``
that refuses connections fails at once (:func:`probe`) instead of after ``ray.init``'s minutes of
retries.

Nothing here imports Ray until a function runs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, Iterator

from varmem.distributed.config import ConfigError

# Quiet, quick Ray defaults for the clusters and workers varmem starts (a user's environment wins):
# no duplicated prints from the print patch, health checks at 0.2 s (a 2-worker fit of a tiny model
# took 19–25 s with it against 30–38 s with the default, notes/ray.md).
RAY_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}

UNREACHABLE_HINT = "start one with `ray start --head`, or leave --address out to start one for this command"


def connect(address: str | None, *, log_to_driver: bool = True) -> bool:
    """Join ``address`` (else RAY_ADDRESS), else start a private cluster on this machine ("local": never
    an earlier ``ray start`` found through Ray's address file, which outlives a killed cluster and made
    ``ray.init()`` retry for minutes here). Nothing when Ray is already initialised (a test's cluster, a
    Tune trial). True when this call made the connection (and so shuts it down: ``ray.shutdown()``)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    probe(address)
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver, configure_logging=True)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address}: {exc} ({UNREACHABLE_HINT})") from None
    return True


@contextlib.contextmanager
def connected(address: str | None, *, log_to_driver: bool = True) -> Iterator[None]:
    """:func:`connect` for a ``with`` block; at its end ``ray.shutdown()`` when the block's connection was new."""
    started = connect(address, log_to_driver=log_to_driver)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def probe(address: str, timeout_s: float = 3.0) -> None:
    """A ``host:port`` address that refuses connections fails now, not after Ray's minutes of retries."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "local", "auto", "ray://...": Ray's own resolution
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc} ({UNREACHABLE_HINT})") from None


def check_resources(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> dict[str, Any]:
    """The connected cluster's address and totals (``{"address", "CPU", "GPU"}``); ConfigError when
    ``workers`` × (CPUs, GPUs) do not fit it, in all or on any one node (Ray would wait for them forever)."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    address = ray.get_runtime_context().gcs_address
    asks = []
    if workers * cpus_per_worker > cpus:
        asks.append(f"{workers} worker(s) × {cpus_per_worker:g} CPU = {workers * cpus_per_worker:g} CPUs but it has {cpus:g}")
    if workers * gpus_per_worker > gpus:
        asks.append(f"{workers} worker(s) × {gpus_per_worker:g} GPU = {workers * gpus_per_worker:g} GPUs but it has {gpus:g}")
    if not asks:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if nodes and not any(n.get("CPU", 0) >= cpus_per_worker and n.get("GPU", 0) >= gpus_per_worker for n in nodes):
            asks.append(f"one worker needs {cpus_per_worker:g} CPU and {gpus_per_worker:g} GPU on one node, "
                        "and no node has that")
    if asks:
        raise ConfigError(f"the Ray cluster at {address} cannot hold this run: " + "; ".join(asks)
                          + " (lower --workers or --gpus-per-worker, or add resources to the cluster)")
    return {"address": address, "CPU": cpus, "GPU": gpus}
