"""The Ray cluster a command runs on: one way to join or start it, and the check that it can hold a launch.

``varmem train --workers N`` (distributed/ray_train.py) and ``varmem tune`` (distributed/search/)
both connect through :func:`connected` (a ``with`` block around :func:`connect`): ``--address``
(``host:port`` or ``auto``), else ``RAY_ADDRESS`` (which a ``ray job submit`` driver has), else a
private cluster started on this machine for the command and stopped at its end. A ``host:port``
that refuses connections fails at once (:func:`probe`) instead of after ``ray.init``'s minutes of
retries.

A private cluster (:func:`start_private`) never joins another one: not an earlier ``ray start``
named by Ray's address file (``/tmp/ray/ray_current_cluster``, which outlives a killed cluster and
made ``ray.init()`` retry for minutes), nor any other Ray instance running on the machine. Every
process of it — the GCS, the raylet and its object manager, the dashboard and its agents, the
workers — listens on 127.0.0.1 only, and its own processes find it by ``RAY_ADDRESS`` (set for the
cluster's lifetime: without it Ray Train's placement-group cleaner looked for "the" local
cluster, found two and printed a ``Found multiple active Ray instances`` traceback).

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

LOOPBACK = "127.0.0.1"  # where a private cluster listens
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # Ray's: the port of the GCS a head node starts

UNREACHABLE_HINT = "start one with `ray start --head`, or leave --address out to start one for this command"

_restore_env: dict[str, str | None] = {}  # the variables start_private set, with their values before it


def connect(address: str | None, *, log_to_driver: bool = True) -> bool:
    """Join ``address`` (else RAY_ADDRESS), else start a private cluster on this machine
    (:func:`start_private`: never an earlier ``ray start`` found through Ray's address file, never
    another local instance). Nothing when Ray is already initialised (a test's cluster, a Tune trial).
    True when this call made the connection (and so ends it: :func:`disconnect`)."""
    import ray

    if ray.is_initialized():
        return False
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address == "local":
        start_private(log_to_driver=log_to_driver)
        return True
    probe(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver, configure_logging=True)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address}: {exc} ({UNREACHABLE_HINT})") from None
    return True


def start_private(*, log_to_driver: bool = True, **init_kwargs: Any) -> str:
    """Start a private single-node cluster for this process, listening on 127.0.0.1 only; returns its
    GCS address. ``init_kwargs`` go to ``ray.init`` (``num_cpus``, ``include_dashboard``, ...; Ray Train's
    placement-group cleaner polls the state API, which needs the dashboard that Ray starts by default).

    * ``ray.init(address="local")``: a new cluster, whatever Ray's address file or other instances say;
    * node IP 127.0.0.1: Ray then binds its gRPC servers (GCS, raylet, object manager, workers), the
      dashboard, its agents and metrics to the loopback interface instead of every interface. Ray turns
      a loopback ``_node_ip_address`` into the machine's address unless ``ENABLE_RAY_CLUSTER`` is off,
      so it is turned off for the ``ray.init`` call (a one-node cluster needs no other address);
    * the GCS port is chosen here (``RAY_GCS_SERVER_PORT``) so that ``RAY_ADDRESS`` can name the cluster
      before it starts: its processes inherit it, and Ray's own "find the local cluster" lookups (the
      state API that Ray Train's placement-group cleaner polls) find this one even when other Ray
      instances run on the machine. Both variables are restored by :func:`disconnect`."""
    import ray
    from ray._private import ray_constants

    port = _free_port()
    _set_env({GCS_PORT_ENV: str(port), "RAY_ADDRESS": f"{LOOPBACK}:{port}"})
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # keep the loopback node IP (services.resolve_ip_for_localhost)
    options = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver, "configure_logging": True,
               **init_kwargs, "_node_ip_address": LOOPBACK, "dashboard_host": LOOPBACK}
    try:
        ray.init(address="local", **options)
    except BaseException:
        _reset_env()
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
    return ray.get_runtime_context().gcs_address


def disconnect() -> None:
    """``ray.shutdown()``, and the environment as it was before :func:`start_private`."""
    import ray

    try:
        ray.shutdown()
    finally:
        _reset_env()


@contextlib.contextmanager
def connected(address: str | None, *, log_to_driver: bool = True) -> Iterator[None]:
    """:func:`connect` for a ``with`` block; at its end :func:`disconnect` when the block's connection was new."""
    started = connect(address, log_to_driver=log_to_driver)
    try:
        yield
    finally:
        if started:
            disconnect()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _set_env(values: dict[str, str]) -> None:
    for key, value in values.items():
        _restore_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value


def _reset_env() -> None:
    while _restore_env:
        key, value = _restore_env.popitem()
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
