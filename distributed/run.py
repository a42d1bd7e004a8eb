"""Building and loading runs: the dataset of a config, its model and optimizer, the device, and a
trained run directory opened for evaluation (:func:`load_run`, also ``varmem.load_run``)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from varmem.distributed.config import CONFIG_FILE, ConfigError, OptimConfig, RunConfig
from varmem.episodes.dataset import Dataset
from varmem.models.base import FewShotModel
from varmem.models.registry import family_of
from varmem.distributed.rundir import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint
from varmem.distributed.validation import eval_batches
from varmem.models.eval.bound import evaluate_bound


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
    """The config's dataset, its image size checked, both splits able to supply the config's episodes."""
    dataset = Dataset.open(config.data.dir)
    size = config.data.image_size
    if size and tuple(dataset.image_shape) != (size, size):
        h, w = dataset.image_shape
        raise ConfigError(f"data.image_size is {size} but {dataset.directory} holds {h}×{w} images "
                          f"(set data.image_size={h} or build the dataset with --size {size})")
    for spec in (config.train_spec(), config.eval_spec()):
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


# --- a trained run, for evaluation ------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run directory opened for evaluation: what ``varmem.models.eval.protocol.evaluate(run, ...)`` receives."""

    run_dir: Path
    config: RunConfig
    model: FewShotModel  # in eval mode, on ``device``, with the checkpoint's parameters
    step: int
    checkpoint: Path
    dataset: Dataset
    device: torch.device


def load_run(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str | None = None) -> LoadedRun:
    """Open ``run_dir`` (its config.yaml and newest checkpoint, or ``checkpoint``) for evaluation."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir / CONFIG_FILE} is missing: {run_dir} is not a varmem run directory")
    config = RunConfig.from_yaml(run_dir / CONFIG_FILE)
    source = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    if source is None:
        raise ConfigError(f"{run_dir / CHECKPOINT_DIR} holds no ckpt-*.pt: train the run first")
    state = load_checkpoint(source)
    dev = resolve_device(device, config)
    dataset = open_dataset(config)
    if config.train.threads:  # as in training: oversubscribed intra-op threads stall each other
        torch.set_num_threads(config.train.threads)
    model = build_model(config, dataset.image_shape)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    return LoadedRun(run_dir=run_dir, config=config, model=model, step=int(state["step"]), checkpoint=source,
                     dataset=dataset, device=dev)


def evaluate_run(run: LoadedRun, *, samples: int = 1000, episodes: int = 100, seed: int | None = None,
                 progress: bool = False, protocol_options: dict[str, Any] | None = None,
                 bound_episodes: int | None = None) -> dict[str, Any]:
    """The test NLL bound with ``samples`` importance samples, its KL parts and (address models) accuracy
    on ``bound_episodes`` (default ``episodes``) fixed episodes of the config's eval shape, and the
    evaluation protocol's results under "protocol", its tables over ``episodes`` episodes
    (``protocol_options``: more keyword arguments of :func:`varmem.models.eval.protocol.evaluate`,
    e.g. ``out_dir``, ``lake_runs``, ``pictures``, ``classification_episodes``)."""
    table_episodes = episodes
    episodes = episodes if bound_episodes is None else bound_episodes
    if samples < 1 or episodes < 1 or table_episodes < 1:
        raise ConfigError(f"--samples, --episodes and --bound-episodes must be ≥ 1, got {samples}, {table_episodes} "
                          f"and {episodes}")
    seed = run.config.train.val_seed if seed is None else seed
    spec = run.config.eval_spec()
    batches = eval_batches(run.dataset, run.config, episodes, seed)

    every = max(1, episodes // 10)
    shown = 0

    def report(done: int) -> None:
        nonlocal shown
        if progress and (done - shown >= every or done == episodes):
            shown = done
            print(f"  {done}/{episodes} episodes", file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "split": spec.split,
        "episode": {"ways": spec.ways, "shots": spec.shots, "targets": spec.targets, "distractors": spec.distractors,
                    "alphabet": spec.alphabet, "targets_from_memory": spec.targets_from_memory},
        "seed": seed,
        **evaluate_bound(run.model, batches, samples=samples, num_samples=run.config.train.num_samples,
                         chunk=run.config.train.chunk, seed=seed, device=run.device, progress=report),
    }
    # the protocol: NLL tables vs memory, classification with CIs, Lake runs, pictures
    from varmem.models.eval.protocol import evaluate

    options = {"progress": (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None,
               **(protocol_options or {})}
    result["protocol"] = evaluate(run, samples=samples, episodes=table_episodes, seed=seed, **options)
    return result

