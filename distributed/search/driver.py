"""The search: check everything a user can get wrong, connect to Ray, fit a ``Tuner`` of
:func:`varmem_trial` over the space, and write the results (:func:`run_search`).

Scheduling: ``--scheduler asha`` is ``ASHAScheduler(time_attr="step", max_t=train.steps,
grace_period, reduction_factor, stop_last_trials=False)``; trials run as many at once as the
cluster's CPUs hold (or ``--max-concurrent``). ``--resume`` restores the experiment with
``Tuner.restore(SEARCH_DIR/tune, trainable=...)``, once :func:`~varmem.distributed.search.trust.verify`
found its pickled state signed by this user (:mod:`varmem.distributed.search.trust`); the state is
signed while the search runs (:class:`~varmem.distributed.search.trust_callback.SignStateCallback`) and when it ends.

The search directory may be a URI on object storage (``--out s3://bucket/searches/NAME``): Tune's experiment
goes there through ``tune.RunConfig(storage_path, storage_filesystem)`` (the filesystem carries the S3
endpoint, never credentials: each node reads its own from its environment), each trial's run directory is a
run on the URI, and ``--resume`` verifies the signature of the state there before ``Tuner.restore`` reads it.
The metric the trials are ranked by is chosen per search from the families' capabilities, or named in the
space file (distributed/search/metric.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from varmem.distributed import cluster, init_from
from varmem.distributed.config import ConfigError, RunConfig
from varmem.distributed.search.metric import SearchMetric, choose_metric
from varmem.distributed.search.results import collect_rows, format_table, write_results
from varmem.distributed.search.searchdir import (BEST_CONFIG, RESULTS_CSV, RESULTS_JSON, SEARCH_FILE, TUNE_DIR,
                                                 SearchOptions, clear_search_dir, load_search, save_search,
                                                 search_location)
from varmem.distributed.search import trust
from varmem.distributed.search.space import Space, check_space, preflight
from varmem.distributed.search.trial import TIME_ATTR, TrialSetup, trial_dirname, varmem_trial
from varmem.episodes import storage
from varmem.episodes.storage import Location, is_uri

DRIVER_CPUS = 0.01  # a --workers N trial only drives its TorchTrainer (Tune refuses {"cpu": 0})


@dataclass
class SearchResult:
    search_dir: "Path | str"  # a local path, or the URI of a search on object storage
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool  # some trials are unfinished: `varmem tune --resume --out SEARCH_DIR` continues them
    checked_only: bool = False  # --check: everything was checked, nothing ran
    metric: SearchMetric | None = None  # what the trials were ranked by


def run_search(base: RunConfig | None, space: Space | None, options: SearchOptions | None, search_dir: str | Path, *,
               resume: bool = False, overwrite: bool = False, address: str | None = None, quiet: bool = False,
               space_file: str | Path | None = None, log: Callable[[str], None] | None = None,
               trust_search_dir: bool = False, check_only: bool = False,
               metric: SearchMetric | None = None, s3_endpoint: str | None = None) -> SearchResult:
    """Run (or with ``resume`` continue) a search; writes the results table and the best config.

    A fresh search needs ``base``, ``space`` and ``options`` (and ``metric``, when the space file names one);
    ``resume`` takes them from ``SEARCH_DIR/search.yaml`` (pass None) and refuses a search whose pickled state
    this user's key did not sign (:func:`trust.verify`) unless ``trust_search_dir``. ``search_dir``: a local
    path or a URI (s3://bucket/searches/NAME). Every problem a user can fix raises ConfigError before Ray is
    reached and before anything is written. ``check_only`` (``--check``): stop after those checks, with a
    line saying what the search would run. ``s3_endpoint`` (``--resume --s3-endpoint``): the trials' S3 endpoint
    when the search's config names none (a fresh search has it in the base config)."""
    emit = log or (lambda line: print(line, flush=True))
    if base is not None and base.storage.s3_endpoint:
        storage.configure(base.storage.s3_endpoint)  # the search directory may be on that server
    given_dir = storage.display(search_dir) if is_uri(search_dir) else Path(search_dir)
    place = search_location(search_dir)
    search_dir = place.uri if not place.is_local else place.local_path
    where = str(space_file) if space_file is not None else "space"

    # 1. what to run (nothing written yet)
    key = None  # the search signing key (distributed/search/trust.py): a problem with it is reported before Ray
    if resume:
        if base is not None or space is not None or options is not None:
            raise ConfigError("--resume continues the search in SEARCH_DIR with its own config, space and options "
                              f"({search_dir / SEARCH_FILE}): leave out --config, --space and the search options")
        if not place.child(SEARCH_FILE).is_file():
            raise ConfigError(f"nothing to resume: {place.child(SEARCH_FILE)} is missing ({place} holds no varmem search)")
        if trust_search_dir:
            emit(f"warning: {trust.TRUST_FLAG}: resuming {given_dir} without checking who wrote its pickled state")
        else:
            key = trust.load_key()
            trust.verify(place, key)  # before Ray (or anything else) reads a pickle of it, or its config
        base, space, options, cwd, where, metric = load_search(place)
        if s3_endpoint and not base.storage.s3_endpoint:  # the trials reach the storage through it, too
            base = base.with_overrides([f"storage.s3_endpoint={json.dumps(s3_endpoint)}"])
        if base.storage.s3_endpoint:
            storage.configure(base.storage.s3_endpoint)
        if not place.child(TUNE_DIR).is_dir():
            raise ConfigError(f"nothing to resume: {place.child(TUNE_DIR)} is missing (start the search without --resume)")
    else:
        if base is None or space is None:
            raise ConfigError("varmem tune needs --config FILE and --space SPACE.yaml (or --resume --out SEARCH_DIR)")
        options = options or SearchOptions()
        cwd = Path.cwd()
        if place.child(SEARCH_FILE).exists() or place.child(TUNE_DIR).is_dir():
            if not overwrite and not check_only:
                raise ConfigError(f"{given_dir} already holds a search: pass --resume to continue it "
                                  "or --overwrite to start it again")
    options.check(base)
    resolved, _ = init_from.pin(base.resolve_paths(cwd))  # every trial starts from the same, hashed checkpoint
    space, variants = check_space(space, resolved, where)
    models = preflight([({}, resolved)] + variants, where)
    chosen = choose_metric(metric, models, where)
    if options.scheduler == "asha" and (not base.train.val_every or base.train.val_every >= base.train.steps):
        emit(f"warning: train.val_every={base.train.val_every} validates only at the end of train.steps={base.train.steps}: "
             "ASHA has nothing to stop trials on (set train.val_every)")
    if check_only:
        grid = math.prod(len(p.args) for p in space.values() if p.kind == "grid")
        emit(f"ok: {where}: {len(space)} key(s); {grid} grid point(s) × {options.samples} sample(s) = "
             f"{grid * options.samples} trial(s) of {resolved.train.steps} steps; {1 + len(variants)} config(s) checked "
             f"(dataset, episodes, model); trials ranked by the {chosen.selection()} ({chosen.tune_key}, {chosen.mode}); "
             "nothing was run or written")
        return SearchResult(search_dir=search_dir, rows=[], best=None, interrupted=False, checked_only=True, metric=chosen)
    if key is None:
        trust.load_key()  # the state will be signed with it (created on first use): a bad key file fails here, not at the end

    # 2. the cluster (before writing: a missing cluster writes nothing)
    with cluster.connected(address, log_to_driver=not quiet):
        cluster_cpus = _check_cluster(options)
        if not resume:
            if overwrite:
                clear_search_dir(place)
            place.makedirs()
            save_search(place, base, space, options, cwd, where, metric)
        grid = _fit(resolved, space, options, place, resume=resume, cluster_cpus=cluster_cpus, quiet=quiet,
                    key=None if trust_search_dir else key, metric=chosen)
        rows = collect_rows(grid, space, place, resolved.train.steps, quiet=quiet, metric=chosen)

    # 3. results
    best = write_results(place, str(given_dir), base, space, options, rows, chosen)
    interrupted = any(r["status"] in ("unfinished", "not started") for r in rows)
    emit(format_table(rows, space, best, chosen))
    emit(f"results: {place.child(RESULTS_CSV)}, {place.child(RESULTS_JSON)}")
    if best is not None:
        config_file = place.child(BEST_CONFIG).uri if not place.is_local else given_dir / BEST_CONFIG
        emit(f"best: trial {best['trial']}, final {chosen.label} {best[chosen.final_key]:.3f}{chosen.unit} → "
             f"{config_file}  (varmem train --config {config_file})")
    if interrupted:
        emit(f"the search was interrupted: continue it with `varmem tune --resume --out {given_dir}`")
    return SearchResult(search_dir=search_dir, rows=rows, best=best, interrupted=interrupted, metric=chosen)


def _check_cluster(options: SearchOptions) -> float:
    """The cluster's CPUs; ConfigError when one trial needs more than the cluster has (it would wait forever)."""
    import ray

    if not options.workers:
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if options.cpus_per_trial > cpus:
            raise ConfigError(f"--cpus-per-trial {options.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")
        return cpus
    resources = cluster.check_resources(options.workers, options.cpus_per_trial, 0.0)
    need = options.workers * options.cpus_per_trial + DRIVER_CPUS
    if need > resources["CPU"]:
        fits = (resources["CPU"] - DRIVER_CPUS) / options.workers
        raise ConfigError(
            f"a trial of {options.workers} worker(s) × {options.cpus_per_trial:g} CPU and its driver ({DRIVER_CPUS:g} CPU) "
            f"needs {need:g} CPUs but the Ray cluster at {resources['address']} has {resources['CPU']:g}: "
            f"pass --cpus-per-trial {math.floor(fits * 100) / 100:g} (CPUs per worker; Ray's CPUs are logical), "
            "fewer --workers, or a cluster with more logical CPUs (ray start --head --num-cpus N)")
    return resources["CPU"]


def _fit(base: RunConfig, space: Space, options: SearchOptions, place: Location, *, resume: bool,
         cluster_cpus: float, quiet: bool, key: bytes | None = None, metric: SearchMetric):
    """Tune's fit of the search (a new ``Tuner``, or ``Tuner.restore`` with ``resume``); the search's state
    is signed when it returns or fails. ``key``: check the signature again right before the restore (the
    cluster took seconds to start; None: the user passed --trust-search-dir)."""
    if resume and key is not None:
        trust.verify(place, key)  # outside the try: a search that fails it is never signed
    try:
        return _fit_tuner(base, space, options, place, resume=resume, cluster_cpus=cluster_cpus, quiet=quiet,
                          metric=metric)
    finally:
        try:
            if place.child(TUNE_DIR).is_dir():
                trust.sign(place)
        except (ConfigError, storage.StorageError, OSError) as exc:
            print(f"warning: could not sign the state of {place}: {exc}; `varmem tune --resume` will refuse "
                  f"it unless {trust.TRUST_FLAG}", file=sys.stderr, flush=True)


def _fit_tuner(base: RunConfig, space: Space, options: SearchOptions, place: Location, *, resume: bool,
               cluster_cpus: float, quiet: bool, metric: SearchMetric):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from varmem.distributed.search.trust_callback import SignStateCallback
    from varmem.models.registry import loaded_plugins

    setup = TrialSetup(config=base.to_dict(), search_dir=place.uri, workers=options.workers,
                       plugins=tuple(loaded_plugins()), cpus_per_worker=options.cpus_per_trial, metric=metric)
    # in-process: the trial trains, so it holds its CPUs; --workers N: a thin driver, its workers hold the CPUs
    resources = {"cpu": options.cpus_per_trial} if options.workers == 0 else {"cpu": DRIVER_CPUS}
    trainable = tune.with_resources(tune.with_parameters(varmem_trial, setup=setup), resources)
    # Ray's storage: the search directory itself (a URI's filesystem carries its endpoint, no credentials)
    storage_fs = None if place.is_local else place.fs
    experiment = place.child(TUNE_DIR).path
    # CheckpointConfig(num_to_keep=1) snapshots the experiment at every trial checkpoint (what --resume wants);
    # Tune warns about it each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        if not tune.Tuner.can_restore(experiment, storage_filesystem=storage_fs):
            raise ConfigError(f"nothing to resume: {place.child(TUNE_DIR)} holds no Tune experiment state")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   storage_filesystem=storage_fs)
        return _quietly(tuner.fit, quiet)
    per_trial = options.cpus_per_trial * options.workers + DRIVER_CPUS if options.workers else options.cpus_per_trial
    concurrent = options.max_concurrent or max(1, int(cluster_cpus // per_trial))
    if options.scheduler == "asha":
        # stop_last_trials=False: a trial that reaches max_t ends by itself (its final metrics and checkpoint
        # written), instead of being stopped by its last report, which comes before the final files
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=base.train.steps, grace_period=options.grace(base),
                                  reduction_factor=options.reduction_factor, stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space={key: param.domain() for key, param in space.items()},
        tune_config=tune.TuneConfig(
            metric=metric.tune_key, mode=metric.mode, scheduler=scheduler, num_samples=options.samples,
            # the generator limits concurrency itself (Tune ignores max_concurrent_trials with a SearchGenerator)
            search_alg=BasicVariantGenerator(random_state=options.seed, max_concurrent=concurrent),
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=place.path, storage_filesystem=storage_fs, verbose=0 if quiet else 1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # a copy for restore; the run keeps its own
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[SignStateCallback(place.uri)]),  # pickled into tuner.pkl: a restored search signs, too
    )
    return _quietly(tuner.fit, quiet)


def _quietly(fit: Callable[[], Any], quiet: bool) -> Any:
    """``fit()``; with ``quiet`` without Tune's tables on stdout (Tune prints some at every verbosity)."""
    if not quiet:
        return fit()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return fit()

