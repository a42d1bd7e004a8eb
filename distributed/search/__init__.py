"""``varmem tune``: a Ray Tune search over run-config fields, each trial a training run.

The package, one concept a module: ``space`` (the space file: parsed, checked against the base config),
``metric`` (what the trials are ranked by, chosen per search),
``trial`` (one trial: its run and its reports to Tune), ``driver`` (the search: checks, cluster, Tuner),
``results`` (rows, files, table), ``searchdir`` (the search directory, options, ``search.yaml``), ``trust``
(the signature of the search's pickled state: ``--resume`` runs only searches this user wrote), ``cli``
(``varmem tune``; ``python -m varmem.distributed.tune`` runs it).

    varmem tune --config FILE --space SPACE.yaml [--samples N] [--scheduler fifo|asha] [--out SEARCH_DIR]
                [--set section.key=value ...] [--steps N] [--workers N] [--cpus-per-trial C]
                [--max-concurrent N] [--grace-period STEPS] [--reduction-factor F] [--seed S]
                [--address ADDR] [--overwrite] [--quiet] [--check]
    varmem tune --resume --out SEARCH_DIR [--trust-search-dir] [--s3-endpoint URL]
                                              continue an interrupted search (its own config, space, options)

SEARCH_DIR may be a URI on object storage (``s3://bucket/searches/NAME``; ``--s3-endpoint URL`` for an
S3-compatible server, credentials from the environment): the search's files, Tune's experiment
(``tune.RunConfig(storage_path, storage_filesystem)``) and every trial's run directory are then there, the
checkpoints once (each run's own; Tune is handed none), and ``--resume`` verifies the signature of the
state there before Ray reads it (docs/TUNE.md, "Searches on object storage").
    python -m varmem.distributed.tune ...            the same flags

The space file
--------------
A YAML mapping from run-config paths (the keys of ``varmem train --set``: ``optim.lr``,
``model.z_dim``, ``train.num_samples``, ``episode.train.shots``) to one distribution each::

    optim.lr: {grid: [1.0e-4, 3.0e-4]}             every value in every sample (Tune's grid_search)
    model.z_dim: {choice: [32, 64]}                one value drawn per trial, uniformly
    optim.weight_decay: {loguniform: [1.0e-6, 1.0e-3]}   a float, log-uniform in [low, high)
    optim.grad_clip: {uniform: [1.0, 20.0]}         a float, uniform in [low, high)
    episode.train.shots: {randint: [1, 5]}         an integer in [low, high], both ends included
    train.val_every: {value: 100}                  one fixed value for every trial (or just ``train.val_every: 100``)
    metric: accuracy                               optional: the validation value trials are ranked by
                                                   (``{name: cross_entropy, mode: min}``; distributed/search/metric.py)

Write floats with a dot (``1.0e-4``): YAML 1.1 reads ``1e-4`` as a string (it is still accepted
where the field is a float). ``--samples N`` draws N trials per grid point: N × the product of the
grid sizes trials in all. Before any trial starts, every key must be a field of the config and
every value must fit it: each grid/choice value and both ends of each range are applied to the
base config with the config's own type and range checks, all grid/choice combinations together
when there are at most 64 of them, the dataset must supply the episodes and the model section must
build. Whatever fails raises :class:`~varmem.distributed.search.space.SpaceError` (a ConfigError: ``varmem: error: ...``, status 2)
naming the space file, the key and the value; ``--check`` runs these checks and exits (no Ray, no
trial, nothing written). A search may not vary what makes trials'
validation NLLs comparable or what it owns itself: the ``data`` and ``run`` sections,
``episode.eval``, ``train.steps`` (ASHA's horizon: use ``--steps``), ``train.val_episodes``,
``train.val_samples`` and ``train.val_seed``.

Trials
------
Each trial is one training run in ``SEARCH_DIR/trials/<trial id>`` (a normal run directory:
``config.yaml``, ``checkpoints/``, ``metrics.jsonl``, ``final_metrics.json``, ``tensorboard/``).
``--workers 0`` (the default) runs :func:`varmem.distributed.train_loop.train` inside the Tune trial
(one CPU each, ``--cpus-per-trial``); ``--workers N`` makes the trial a thin driver (0.01 CPU)
that fits a Ray Train ``TorchTrainer`` of N workers through
:func:`varmem.distributed.ray_train.train_distributed`.

A trial reports to Tune whenever its run has a new validation NLL bound, and whenever it writes a
checkpoint after its first validation: the metric must be in every report, and the train loop's
reports carry the training values only, so :class:`~varmem.distributed.search.trial.TrialReporter` takes the newest validation from
the run's ``metrics.jsonl`` (rank 0 writes it before the next report). In-process the train loop's
``report`` callback calls ``tune.report`` (with the checkpoint: Tune keeps a copy); for
``--workers N`` the TorchTrainer's controller runs a ``TuneReportCallback`` that forwards the same
reports (with the path of Ray's copy of the checkpoint). Every report carries ``step`` (training
steps: ASHA's time attribute), ``val_step``, every validation value as ``val_*`` — among them the
search's metric: ``val_nll_bound`` (nats, min) when every trial's family has a likelihood,
``val_accuracy`` (max) for classifiers without one, or the space file's ``metric:`` — and the last
training window's values as ``train_*``. A search mixing families with and without a likelihood must
name a metric every trial logs; each trial's model is checked before any trial starts. A validation at a step that is not a checkpoint step
reaches Tune with the next log line's report (the train loop reports a log line before it validates).

``--scheduler asha`` stops trials early: ``ASHAScheduler(time_attr="step", max_t=train.steps,
grace_period=--grace-period (default train.val_every), reduction_factor=--reduction-factor,
stop_last_trials=False)``. A trial is judged at a rung (grace period × F^k steps) on the newest
validation NLL of its first report past the rung, so validate at least as often as the grace period.

The search directory
--------------------
::

    SEARCH_DIR/search.yaml        what was asked: the base config, the space, the options (for --resume)
    SEARCH_DIR/tune/              Ray Tune's experiment (what Tuner.restore reads)
    SEARCH_DIR/trials/<trial>/    each trial's run directory
    SEARCH_DIR/results.csv        one row per trial: the sampled values, final and best value of the metric, steps, status
    SEARCH_DIR/results.json       the same rows, the metric, the best trial
    SEARCH_DIR/best_config.yaml   the base config with the best trial's values: `varmem train --config` takes it
    SEARCH_DIR/signature.json     varmem's HMAC of search.yaml and of the pickled state in tune/ (``trust``)

The best trial has the best final value of the metric (its last validation): the lowest validation NLL
bound by default. ``--resume``
(Ctrl-C stops a search and saves its state) restores the experiment with
``Tuner.restore(SEARCH_DIR/tune, trainable=...)``: finished trials stay as they are, unfinished
ones continue from the newer of Tune's copy of their checkpoint and their run directory's
newest checkpoint, exactly as ``varmem train --resume`` continues a run; the trials not generated
yet are (Tune saves the search generator's state). Tune 2.60 does not save the scheduler's state:
after a resume, ASHA's rungs fill again from the resumed and new trials' reports only. Ray's restore
unpickles the state in ``tune/`` (unpickling runs any code a pickle names), so ``--resume`` first checks
that this user's key signed it (:mod:`~varmem.distributed.search.trust`): a search received from
someone else is refused in one line unless ``--trust-search-dir`` (docs/TUNE.md).

Importing this package, ``space``, ``searchdir``, ``trust`` or ``cli`` imports neither torch nor Ray.
"""
