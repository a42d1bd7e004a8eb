"""Building and loading runs: the dataset of a config, its model and optimizer, the device, and a
trained run directory opened for evaluation and notebooks (:func:`load_run`, also ``varmem.load_run``).

    run = varmem.load_run("runs/vma_strokes")            # no dataset needed: the model, its config
    x = run.sample(memory, 8, kind="binary", seed=0)      # memory [M, 1, H, W] → [8, 1, H, W]
    ll = run.log_likelihood(memory, targets, 1000)        # [T] nats (a lower bound on log p(x|M))
    labels = run.classify(memory, memory_labels, targets) # [T] int64

:func:`evaluate_run` is the adapter from a run directory to ``varmem.models.eval`` (``varmem eval``).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from varmem.distributed.config import CONFIG_FILE, ConfigError, OptimConfig, RunConfig
from varmem.distributed.rundir import CHECKPOINT_DIR, load_checkpoint, newest_intact_checkpoint
from varmem.distributed.validation import eval_batches
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.models.base import Batch, FewShotModel, argmax_random_ties
from varmem.models.registry import family_of


def resolve_device(name: torch.device | str | None, config: RunConfig) -> torch.device:
    name = name if name is not None else config.train.device
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but torch sees no CUDA device (use cpu or auto)")
    return torch.device(name)


def open_dataset(config: RunConfig) -> Dataset:
    """The config's dataset (a path or a URI), its image size checked, both splits able to supply the config's
    episodes. The config's ``storage`` section (S3 endpoint, shard cache) applies to this process from here on."""
    config.storage.apply()
    dataset = Dataset.open(config.data.dir, verify=None if config.data.verify_shards else False)
    size = config.data.image_size
    if size and tuple(dataset.image_shape) != (size, size):
        h, w = dataset.image_shape
        raise ConfigError(f"data.image_size is {size} but {dataset.directory} holds {h}×{w} images "
                          f"(set data.image_size={h} or build the dataset with --size {size})")
    resolved = config.resolve_splits(dataset)  # roles (train, eval) → this dataset's split names
    for spec in (resolved.train_spec(), resolved.eval_spec()):
        spec.check_against(dataset.split(spec.split), f"split {spec.split!r} of {dataset.directory}")
    return dataset


def build_model(config: RunConfig, image_shape: tuple[int, int]) -> FewShotModel:
    """The config's model: its family (``model.name``, varmem.models.registry) built from ``config.model``."""
    try:
        return family_of(config.model).build(config.model, tuple(image_shape))
    except ValueError as exc:  # the family's own checks of the image shape and its config
        raise ConfigError(f"model ({config.model.family}): {exc}") from None


def build_optimizer(model: FewShotModel, o: OptimConfig) -> torch.optim.Adam:
    """Adam over the family's parameter groups (``model.parameter_groups``: e.g. VMA's learned memory
    entries without weight decay, VMA §4.3)."""
    groups = [g for g in model.parameter_groups(o.weight_decay) if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.Adam(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


# --- a trained run ---------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run directory opened for evaluation and notebooks: the model (eval mode, on ``device``, with
    the checkpoint's parameters), its config, and the dataset evaluation reads (``data_dir``: the
    ``--data`` directory, else the config's ``data.dir``), opened only when first used.

    The tensor methods take memory [G, M, 1, H, W] (G episodes) or [M, 1, H, W] (one episode, and
    then return without the G axis), images in [0, 1] (the run trained on ``config.data.binarize``
    images); they run on the run's device and return tensors there. ``seed``: None draws from
    torch's global RNG; an int draws from a forked RNG seeded with it (the caller's RNG untouched).
    """

    run_dir: Path  # or the Location of a run directory on object storage (str(): its URI)
    config: RunConfig
    model: FewShotModel
    step: int
    checkpoint: Path  # or a Location on object storage
    device: torch.device
    image_shape: tuple[int, int]  # (H, W) of the model
    data_dir: Path | str  # a path or a URI
    _dataset: Dataset | None = field(default=None, repr=False)

    @property
    def dataset(self) -> Dataset:
        """The dataset evaluation reads, opened on first use; its image size checked against the model's."""
        if self._dataset is None:
            if same_place(self.data_dir, self.config.data.dir):
                self._dataset = open_dataset(self.config)
            else:
                self._dataset = Dataset.open(self.data_dir, verify=None if self.config.data.verify_shards else False)
            if tuple(self._dataset.image_shape) != tuple(self.image_shape):
                (h, w), (H, W) = self._dataset.image_shape, self.image_shape
                raise DataError(f"{self._dataset.directory} holds {h}×{w} images but the run {self.run_dir} was trained "
                                f"on {H}×{W} images: evaluate on a dataset built at {H}×{W} (varmem data build ... --size {H})")
        return self._dataset

    def eval_split(self, requested: str | None = None) -> tuple[str, str]:
        """(the split evaluation reads, why that one): ``requested`` (``--split``), else the run's eval
        split (or the split of its role), else the dataset's evaluation split; a DataError naming the
        splits there are otherwise."""
        dataset, own = self.dataset, self.config.data.eval_split
        if requested is not None:
            try:
                split = dataset.resolve_split(requested)
            except DataError as exc:
                raise DataError(f"--split {requested}: {exc}") from None
            return split, "--split" if split == requested else f"--split {requested!r}: the split of that role here"
        try:
            split = dataset.resolve_split(own)
            return split, ("the run's eval split" if split == own
                           else f"the dataset's eval split: the run's eval split {own!r} is not in it")
        except DataError:
            split = dataset.roles.get("eval")
            if split is None and len(dataset.split_names) == 1 and not same_place(self.data_dir, self.config.data.dir):
                # another dataset with one split (e.g. an Omniglot release build of one background zip): none of
                # its classes were trained on, so all of it is held out for this run
                only = dataset.split_names[0]
                return only, f"the dataset's only split (it has no split {own!r}, the run's eval split, and no eval role)"
            if split is None:
                raise DataError(f"{dataset.directory} has no split {own!r} (the run's eval split) and no evaluation split; "
                                f"its splits are {', '.join(map(repr, dataset.split_names))}: pass --split NAME") from None
            return split, f"the dataset's evaluation split (it has no split {own!r}, the run's eval split)"

    # --- the notebook API ------------------------------------------------------------------------
    def _images(self, x: torch.Tensor, name: str, episodes: int | None) -> tuple[torch.Tensor, bool]:
        """x as float [G, N, 1, H, W] on the device, and whether it came without the G axis."""
        given = torch.as_tensor(x)
        one = given.dim() == 4
        x = given.unsqueeze(0) if one else given
        H, W = self.image_shape
        if x.dim() != 5 or tuple(x.shape[2:]) != (1, H, W):
            raise ValueError(f"{name} must be [G, N, 1, {H}, {W}] or [N, 1, {H}, {W}] (this run's images are {H}×{W}), "
                             f"got {list(given.shape)}")
        if episodes is not None and x.shape[0] != episodes:
            raise ValueError(f"{name} holds {x.shape[0]} episodes but memory holds {episodes}")
        return x.to(self.device, torch.float32), one

    def _rng(self, seed: int | None):
        from contextlib import nullcontext

        from varmem.models.eval.passes import seeded

        return nullcontext() if seed is None else seeded(int(seed), self.device)

    def sample(self, memory: torch.Tensor, num: int, kind: str = "mean", *, seed: int | None = None) -> torch.Tensor:
        """``num`` images from p(x | memory) per episode: [G, num, 1, H, W] (or [num, 1, H, W]);
        ``kind`` "mean" (Bernoulli means, grey) or "binary" (samples, pixels drawn)."""
        m, one = self._images(memory, "memory", None)
        with self._rng(seed):
            x = self.model.sample(m, num, kind=kind)  # [G, num, 1, H, W]
        return x[0] if one else x

    def log_likelihood(self, memory: torch.Tensor, targets: torch.Tensor, num_samples: int = 1000, *,
                       seed: int | None = None) -> torch.Tensor:
        """The ``num_samples``-sample lower bound on log p(target | memory), in nats: [G, T] (or [T]);
        in passes of bounded memory whatever ``num_samples`` is."""
        from varmem.models.eval.passes import pass_shape

        m, one = self._images(memory, "memory", None)
        t, _ = self._images(targets, "targets", m.shape[0])
        per_pass, chunk = pass_shape(t.shape[1], m.shape[1] + t.shape[1], num_samples, self.config.train.chunk, self.device)
        with self._rng(seed):
            ll = torch.cat([self.model.log_likelihood(Batch(m[i:i + per_pass], t[i:i + per_pass]), num_samples, chunk=chunk)
                            for i in range(0, m.shape[0], per_pass)])  # [G, T]
        return ll[0] if one else ll

    def classify(self, memory: torch.Tensor, memory_labels: torch.Tensor, targets: torch.Tensor, *,
                 seed: int | None = None) -> torch.Tensor:
        """The class (a memory label) of each target, int64 [G, T] (or [T]): the argmax of the family's
        class scores, ties broken at random (varmem's one classifier rule)."""
        m, one = self._images(memory, "memory", None)
        t, _ = self._images(targets, "targets", m.shape[0])
        labels = torch.as_tensor(memory_labels).to(self.device, torch.int64)
        labels = labels.unsqueeze(0) if labels.dim() == 1 else labels  # [G, M]
        if tuple(labels.shape) != tuple(m.shape[:2]):
            raise ValueError(f"memory_labels must be [G, M] = {list(m.shape[:2])} (or [M]), got {list(memory_labels.shape)}")
        ties = None if seed is None else torch.Generator().manual_seed(int(seed))
        with self._rng(seed):
            pred = argmax_random_ties(self.model.class_scores(Batch(m, t, labels)), ties).to(self.device)  # [G, T]
        return pred[0] if one else pred


def _image_shape(config: RunConfig, state: dict[str, Any], source: Path) -> tuple[int, int]:
    """The model's (H, W): data.image_size when set, else the checkpoint's, else the training dataset's."""
    if config.data.image_size:
        return (config.data.image_size, config.data.image_size)
    if state.get("image_shape") is not None:
        return tuple(int(n) for n in state["image_shape"])  # type: ignore[return-value]
    try:
        return tuple(Dataset.open(config.data.dir, verify=False).image_shape)  # type: ignore[return-value]  (the shape only)
    except DataError as exc:
        raise ConfigError(f"{source} does not record its image size and data.image_size is 0, so the training dataset "
                          f"is needed to tell it: {exc}") from None


def same_place(a: str | Path, b: str | Path) -> bool:
    """Whether two dataset paths or URIs name the same place (paths resolved, URIs compared as written)."""
    from varmem.episodes.storage import display, is_uri

    if is_uri(a) or is_uri(b):
        return display(a) == display(b)
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _place(value: str | Path) -> Path | str:
    """A dataset argument as LoadedRun keeps it: a URI as a string (its pathlib mangling repaired), a path as a Path."""
    from varmem.episodes.storage import is_remote, normalize

    return normalize(value) if is_remote(value) else Path(value)


def _remote_run_config(where) -> RunConfig:
    """A run's config.yaml on object storage (``where``: the run's Location)."""
    from varmem.distributed.config import parse_yaml

    path = where.child(CONFIG_FILE)
    if not path.is_file():
        raise ConfigError(f"{path} is missing: {where} is not a varmem run directory")
    try:
        text = path.read_bytes(max_bytes=16 << 20).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    raw = parse_yaml(text, f"config file {path}")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    try:
        return RunConfig.from_dict(raw, legacy=True)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_run(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str | None = None,
             data: str | Path | None = None, verify_shards: bool | None = None) -> LoadedRun:
    """Open ``run_dir`` (its config.yaml and newest checkpoint, or ``checkpoint``): the model in eval mode.

    No dataset is opened: the image size comes from ``data.image_size`` or the checkpoint. ``data``: the
    dataset evaluation reads (default the config's ``data.dir``), opened now and checked to hold images
    of the model's size (a DataError naming both sizes otherwise). ``verify_shards``: overrides the run's
    ``data.verify_shards`` (check the shards' sha256 when the dataset is opened).

    ``run_dir``, ``checkpoint`` and ``data`` may be URIs (``s3://bucket/runs/NAME``: distributed/remote_run.py;
    the S3 endpoint from the environment, AWS_ENDPOINT_URL, or the run's own ``storage.s3_endpoint``).
    """
    from varmem.episodes.storage import Location, is_remote, is_uri, location, normalize

    remote = isinstance(run_dir, Location) or is_remote(run_dir)
    if remote:
        run_dir = location(run_dir)  # type: ignore[assignment]
        config = _remote_run_config(run_dir)
        if config.storage.s3_endpoint:  # the run's own endpoint (else the one that found its config)
            config.storage.apply()
    else:
        run_dir = location(run_dir).local_path if is_uri(run_dir) else Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir} " + ("is a file, not a run directory (give the folder that holds config.yaml and "
                                               "checkpoints/)" if run_dir.exists() else "does not exist"))
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"{run_dir / CONFIG_FILE} is missing: {run_dir} is not a varmem run directory")
        config = RunConfig.from_yaml(run_dir / CONFIG_FILE)
    if verify_shards is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, verify_shards=verify_shards))
    if checkpoint is not None:
        source = location(checkpoint) if is_remote(checkpoint) else Path(normalize(checkpoint))
        state = load_checkpoint(source)
    elif remote:
        from varmem.distributed.remote_run import RemoteRun

        found = RemoteRun(run_dir).newest_intact(using="evaluating")
        if found is None:
            raise ConfigError(f"{run_dir}/checkpoints holds no checkpoint_N/ckpt-N.pt: the run has not reached its first "
                              "checkpoint (train.checkpoint_every); train it first")
        source, state = found
    else:
        found = newest_intact_checkpoint(run_dir, using="evaluating")
        if found is None:
            raise ConfigError(f"{run_dir / CHECKPOINT_DIR} holds no ckpt-*.pt: the run has not reached its first "
                              "checkpoint (train.checkpoint_every); train it first")
        source, state = found
    dev = resolve_device(device, config)
    if config.train.threads:  # as in training: oversubscribed intra-op threads stall each other
        torch.set_num_threads(config.train.threads)
    image_shape = _image_shape(config, state, source)
    model = build_model(config, image_shape)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    run = LoadedRun(run_dir=run_dir, config=config, model=model, step=int(state["step"]), checkpoint=source, device=dev,
                    image_shape=image_shape,
                    data_dir=_place(data if data is not None else config.data.dir))
    if data is not None:
        run.dataset  # noqa: B018  (opened and its image size checked now: a wrong --data fails before anything runs)
    return run


def evaluate_run(run: LoadedRun, *, samples: int = 1000, episodes: int = 100, seed: int | None = None,
                 split: str | None = None, progress: bool = False, protocol_options: dict[str, Any] | None = None,
                 bound_episodes: int | None = None) -> dict[str, Any]:
    """The headline: the test NLL bound with ``samples`` importance samples, its KL parts and the family's
    accuracy on ``bound_episodes`` (default ``episodes``) fixed episodes of the config's eval shape; then
    the evaluation protocol's results under "protocol", its tables over ``episodes`` episodes
    (``protocol_options``: more keyword arguments of :func:`varmem.models.eval.protocol.plan`, e.g.
    ``out_dir``, ``lake_runs``, ``pictures``, ``classification_episodes``). On ``split`` (see
    :meth:`LoadedRun.eval_split`) of ``run.dataset``. ``progress``: the cost table first, then bars on a
    terminal and a line per finished part, on stderr.
    """
    from varmem.models.base import Capability
    from varmem.models.eval import protocol
    from varmem.models.eval.bound import evaluate_bound
    from varmem.models.eval.cost import bound_cost
    from varmem.models.eval.progress import Progress, timed

    table_episodes = episodes
    episodes = episodes if bound_episodes is None else bound_episodes
    if samples < 1 or episodes < 1 or table_episodes < 1:
        raise ConfigError(f"--samples, --episodes and --bound-episodes must be ≥ 1, got {samples}, {table_episodes} "
                          f"and {episodes}")
    config, dataset = run.config, run.dataset
    seed = config.train.val_seed if seed is None else seed
    split, why = run.eval_split(split)
    spec = dataclasses.replace(config.eval_spec(), split=split)
    spec.check_against(dataset.split(split), f"split {split!r} of {dataset.directory} (episode.eval)")
    say = Progress((lambda line: print(line, file=sys.stderr, flush=True)) if progress else None)
    options = dict(protocol_options or {})
    if options.get("out_dir") is None:
        own = same_place(run.data_dir, config.data.dir) and split == config.data.eval_split
        name = "evaluation" if own else f"evaluation-{dataset.directory.name}-{split}"
        # a run on object storage: its pictures go to a local folder named after it (the protocol writes files)
        options["out_dir"] = (Path.cwd() / f"{run.run_dir.name}-{name}" if not isinstance(run.run_dir, Path)
                              else run.run_dir / name)
    plan = protocol.plan(run.model, dataset, split, binarize=config.data.binarize, threshold=config.data.threshold,
                         seed=seed, chunk=config.train.chunk, samples=samples, episodes=table_episodes, **options)
    likelihood = run.model.supports(Capability.LIKELIHOOD)
    headline = bound_cost(episodes, spec.num_targets, samples if likelihood else None, config.train.num_samples)
    say.say(f"{run.run_dir} at step {run.step} on {dataset.directory} split {split!r} ({why})")
    protocol.announce(plan, say, before=[headline])

    elapsed = timed()
    with say.part(headline.name, episodes) as done:
        bound = evaluate_bound(run.model, eval_batches(dataset, config, episodes, seed, split), samples=samples,
                               num_samples=config.train.num_samples, chunk=config.train.chunk, seed=seed, device=run.device,
                               progress=done, per_episode=True)
    left = sum(c.decodes for c in plan.costs)
    say.finished(headline.name, elapsed(), headline.decodes, left,
                 f"{bound['nll_bound']:.2f} nats" if "nll_bound" in bound else "")
    result: dict[str, Any] = {
        "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "step": run.step,
        "dataset": plan.result["dataset"], "split": split, "split_chosen_by": why,
        "episode": {"ways": spec.ways, "shots": spec.shots, "targets": spec.targets, "distractors": spec.distractors,
                    "alphabet": spec.alphabet, "targets_from_memory": spec.targets_from_memory},
        "seed": seed, **bound,
    }
    result["protocol"] = protocol.run_plan(plan, say)
    return result
