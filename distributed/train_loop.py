"""The training loop, a pure function of its config: ``train(config) -> final metrics``.

One loop for every setting: ``varmem train`` calls it in-process (rank 0 of 1), the Ray Train
worker calls the same function with a :class:`TrainContext` that carries its rank, world size,
device and report callback. Everything a run does follows from the config:

* seeds: torch, numpy and Python are seeded with ``train.seed`` before the model is built (the
  same initial parameters on every rank); the training noise is seeded per episode by (seed,
  global episode index) (``train.noise: episode``, the default: the same run whatever the
  number of workers) or per rank by (seed, rank) (``train.noise: rank``); episodes are a pure
  function of (dataset, spec, seed, episode index);
* steps: ``EpisodeStream`` batch → ``model.objective(memory, targets, K)`` → backward → the
  context's gradient all-reduce (a no-op in-process) → global-norm clipping → Adam;
* every ``log_every`` steps a progress line, a ``metrics.jsonl`` row and TensorBoard scalars;
  every ``val_every`` steps the validation NLL bound on fixed seeded episodes of the eval split,
  computed with its own forked torch RNG so that validating never changes the training
  trajectory, and TensorBoard pictures (one-shot samples, q(a|x));
* every ``checkpoint_every`` steps and at the end an atomic checkpoint (``.tmp`` then rename)
  holding model, optimizer, step, config, every rank's torch/numpy/Python RNG states and the
  stream state; the newest ``keep_checkpoints`` are kept;
* ``resume=True`` continues from the newest checkpoint in the run directory exactly: the same
  episodes, the same noise, the same parameters, step for step, as a run that never stopped.

Run directory::

    RUN_DIR/config.yaml              the full config, every default filled in
    RUN_DIR/checkpoints/ckpt-00001000.pt
    RUN_DIR/metrics.jsonl            one JSON object per log line ("kind": "train" | "val")
    RUN_DIR/final_metrics.json       written at the end (atomically)
    RUN_DIR/tensorboard/             TensorBoard events (``run.tensorboard``; see distributed/tensorboard.py)
    RUN_DIR/ray/                     Ray Train's storage of a ``--workers N`` run (distributed/ray_train.py)
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from varmem.distributed.config import (
    ConfigError,
    RunConfig,
    TrainingDiverged,
    atomic_write_text,
)
from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeBatch
from varmem.episodes.stream import EpisodeStream
from varmem.models.base import Batch, FewShotModel, Objective
from varmem.models.eval.bound import evaluate_bound, few_shot_accuracy  # noqa: F401  (re-exported)
from varmem.distributed.run import build_model, build_optimizer, open_dataset, resolve_device  # noqa: F401
from varmem.distributed.rundir import (  # noqa: F401  (re-exported)
    CHECKPOINT_DIR, CHECKPOINT_FORMAT, FINAL_FILE, METRICS_FILE, TENSORBOARD_DIR, _append_jsonl, _fmt_time, _truncate_metrics,
    checkpoint_path, checkpoint_step, clear_run_dir, latest_checkpoint, list_checkpoints, load_checkpoint,
    prune_checkpoints, save_checkpoint,
)
from varmem.distributed.validation import eval_batches, validation_batches  # noqa: F401

# Fields that may change when a run is resumed: they do not change the training trajectory.
RESUMABLE_CHANGES = (
    "train.steps", "train.log_every", "train.val_every", "train.val_episodes", "train.val_samples", "train.val_seed",
    "train.eval_batch", "train.chunk", "train.checkpoint_every", "train.keep_checkpoints", "train.device", "train.threads",
    "data.dir", "run.out", "run.tensorboard",
)
# Keys of a validation row that are bookkeeping, not the model's values.
VAL_BOOKKEEPING = ("kind", "step", "samples", "objective_samples", "episodes", "nll_bound", "nll_bound_stderr", "accuracy_stderr")


# --- the context: where the loop runs ---------------------------------------------------------


@dataclass
class TrainContext:
    """Where a call of :func:`train` runs. The default is one process: rank 0 of 1, no-op hooks.

    A Ray Train worker passes a subclass (or instance) with its world rank and size, its device,
    a ``report`` callback (``ray.train.report`` with a checkpoint from rank 0), and overrides the
    DDP hooks: :meth:`reduce_gradients` (all-reduce mean of every gradient after backward; the
    models are called through ``objective``, not ``forward``, so DDP's forward hooks would not
    fire) and :meth:`reduce_metrics` (mean of the logged values over ranks).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device | str | None = None  # None: the config's train.device
    report: Callable[[dict[str, Any], Path | None], None] | None = None  # (metrics, checkpoint or None) at every log
    report_logs: bool = True  # report every log line (else only checkpoints: with their metrics, from every rank)
    log: Callable[[str], None] | None = None  # progress lines; default: print to stdout on rank 0
    quiet: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- DDP hooks (in-process: nothing to do) ---
    def prepare_model(self, model: FewShotModel) -> FewShotModel:
        """Called once after the model is on its device and its state is loaded (e.g. to broadcast parameters)."""
        return model

    def reduce_gradients(self, model: FewShotModel) -> None:
        """After backward, before clipping: all-reduce (mean) every gradient over ranks."""

    def reduce_metrics(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of a vector of logged values over ranks."""
        return values

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order; a collective: every rank calls it."""
        return [value]

    def emit(self, line: str) -> None:
        if self.quiet or not self.is_main:
            return
        if self.log is not None:
            self.log(line)
        else:
            print(line, flush=True)


# --- seeding and RNG state --------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def noise_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s training noise (posterior samples): distinct per rank, fixed by the config."""
    return int(np.random.SeedSequence([seed, rank, 0x766D]).generate_state(1, dtype=np.uint64)[0] >> 1)


def episode_noise_seed(seed: int, index: int) -> int:
    """The seed of the training noise of the episode with global index ``index`` (``train.noise: episode``)."""
    return int(np.random.SeedSequence([seed, index, 0x6570]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global RNG state the loop depends on, in types that ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --- data and model ---------------------------------------------------------------------------


# --- the objective of a training step ---------------------------------------------------------


def training_objective(model: FewShotModel, batch: EpisodeBatch, indices: list[int], num_samples: int, *,
                       noise: str, seed: int) -> Objective:
    """The objective of one rank's G episodes, with the noise of ``train.noise``.

    "rank": one batched call; the noise comes from the rank's global RNG stream. "episode": one call
    per episode, the global RNGs seeded first by (seed, the episode's global index), so that every
    episode gets the same noise whichever rank, and with whichever companions, it is trained. The
    loss is the mean of the episodes' losses (every episode has the same T targets: the mean over
    all G·T targets, as in the batched call); the gradient all-reduce then averages over ranks, so
    W ranks × G episodes step exactly as one process with W·G (up to float rounding).
    """
    batch = Batch.of(batch)
    if noise == "rank":
        return model.objective(batch, num_samples)
    parts = []
    for g, index in enumerate(indices):
        seed_everything(episode_noise_seed(seed, index))
        parts.append(model.objective(batch.select(g), num_samples))
    return Objective.concat(parts)  # loss: the mean of the episodes' losses; bound and terms [G, T]


# --- evaluation of a bound --------------------------------------------------------------------


# --- the loop ---------------------------------------------------------------------------------


def step_values(obj: Objective, grad_norm: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The names and values (one float64 vector, no device sync) a step adds to its logging window:
    the loss, the bound when the family has one, the family's terms by name, the gradient norm."""
    names = ["loss"] + (["bound"] if obj.bound is not None else []) + list(obj.terms) + ["grad_norm"]
    values = [obj.loss.detach()] + ([obj.bound.detach().mean()] if obj.bound is not None else [])
    values += [t.detach().float().mean() for t in obj.terms.values()] + [grad_norm.detach()]
    return names, torch.stack([v.to(torch.float64) for v in values])


def describe_values(values: dict[str, float]) -> str:
    """``bound -92.10 | KL(a) 0.512 | ...``: a progress line's view of a family's logged values."""
    parts = []
    for name, value in values.items():
        if name in ("loss", "grad_norm", "nll_bound"):
            continue
        label = {"kl_address": "KL(a)", "kl_latent": "KL(z)"}.get(name, name)
        parts.append(f"{label} {value:.3f}" if abs(value) < 10 else f"{label} {value:.2f}")
    return " | ".join(parts)


def check_run(config: RunConfig, *, resume: bool | str | Path = False,
              overwrite: bool = False) -> tuple[Dataset, Path | None, dict[str, Any] | None]:
    """The checks of a run that need no writes: the dataset (image size, splits able to supply the
    episodes), the checkpoint to resume from and its compatibility, a fresh run's empty run directory.
    Returns (dataset, checkpoint path, checkpoint state); both None for a fresh run. The Ray driver
    calls it before any worker starts; :func:`train` calls it first."""
    config = config.resolve_paths()
    run_dir = Path(config.run.out)
    dataset = open_dataset(config)
    if resume:
        source = latest_checkpoint(run_dir) if resume is True else Path(resume)
        if source is None:
            raise ConfigError(f"nothing to resume: {run_dir / CHECKPOINT_DIR} holds no ckpt-*.pt "
                              "(start the run without --resume)")
        ckpt = load_checkpoint(source)
        _check_resumable(config, ckpt, source)
        return dataset, source, ckpt
    if list_checkpoints(run_dir) and not overwrite:
        last = list_checkpoints(run_dir)[-1][0]
        raise ConfigError(f"run.out {run_dir} already holds checkpoints (up to step {last}): "
                          "pass --resume to continue that run or --overwrite to start it again")
    return dataset, None, None


def train(
    config: RunConfig,
    *,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    context: TrainContext | None = None,
) -> dict[str, Any]:
    """Train the model of ``config``; returns the final metrics (also in ``RUN_DIR/final_metrics.json``).

    ``resume``: True continues from the newest checkpoint in ``config.run.out`` (a ConfigError when
    there is none), a path continues from that checkpoint. A fresh run refuses a run directory that
    already holds checkpoints unless ``overwrite``. Everything that can fail on user input (dataset,
    splits, image size, model section, resume compatibility) fails before anything is written.
    """
    started_at = time.time()
    context = context or TrainContext()
    config = config.resolve_paths()
    tc = config.train
    run_dir = Path(config.run.out)
    device = resolve_device(context.device, config)

    # 1. checks that need no writes ---------------------------------------------------------
    dataset, source, ckpt = check_run(config, resume=resume, overwrite=overwrite)
    start = int(ckpt["step"]) if ckpt else 0

    if tc.threads:
        torch.set_num_threads(tc.threads)
    seed_everything(tc.seed)  # the same initial parameters on every rank
    model = build_model(config, dataset.image_shape).to(device)
    optimizer = build_optimizer(model, config.optim)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the trainable ones
    seed_everything(noise_seed(tc.seed, context.rank))  # the training noise: per rank
    stream = EpisodeStream(dataset, config.train_spec(), seed=tc.seed, rank=context.rank, world_size=context.world_size,
                           batch=tc.episodes_per_step, pin_memory=device.type == "cuda")
    elapsed_before = 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        stream.load_state_dict(ckpt["stream"])
        rng = ckpt["rng_by_rank"].get(context.rank)
        if rng is not None:
            set_rng_state(rng, device)
        else:  # a rank the checkpoint has no state for (a new world size): a fresh, config-derived stream
            seed_everything(noise_seed(tc.seed + start, context.rank))
        elapsed_before = float(ckpt.get("elapsed_s", 0.0))
    model = context.prepare_model(model)
    val_batches = validation_batches(dataset, config, tc.val_episodes, tc.val_seed) if context.is_main else []

    # 2. the run directory -----------------------------------------------------------------------
    metrics_path = run_dir / METRICS_FILE
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            clear_run_dir(run_dir)
        if ckpt is None:  # a fresh run: no events of an earlier attempt
            shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
        for stale in (run_dir / CHECKPOINT_DIR).glob("*.tmp"):
            stale.unlink(missing_ok=True)
        config.save(run_dir)
        if ckpt is not None:
            _truncate_metrics(metrics_path, start)
        else:
            metrics_path.unlink(missing_ok=True)

    n_params = sum(p.numel() for p in params)
    context.emit(f"{'resuming' if ckpt else 'training'} {type(model).__name__} ({n_params:,} parameters) on {device} "
                 f"for steps {start + 1}..{tc.steps} → {run_dir}")
    context.emit(f"  episodes: {config.train_spec().ways}-way, {config.train_spec().shots} shots, "
                 f"{config.train_spec().targets} targets, {tc.episodes_per_step}×{context.world_size} = "
                 f"{tc.episodes_per_step * context.world_size} per step from {dataset.directory.name}/{config.data.train_split}; "
                 f"K={tc.num_samples}; noise per {tc.noise}")

    # 3. the loop --------------------------------------------------------------------------------
    window: torch.Tensor | None = None  # the sums of step_values over the logging window
    window_names: list[str] = []
    window_steps, window_t0, window_wait0 = 0, time.perf_counter(), stream.wait_seconds
    run_t0 = time.perf_counter()
    last_train: dict[str, Any] = {}
    last_val: dict[str, Any] = {}
    last_ckpt: Path | None = None
    paused = 0.0  # seconds spent validating and checkpointing inside the current logging window
    writer = None  # TensorBoard events (rank 0, run.tensorboard)
    first_step_at: float | None = None
    max_norm = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
    log_train_m, log_eval_m = math.log(config.train_spec().memory_size), math.log(config.eval_spec().memory_size)

    def memory_use(row: dict[str, Any], log_m: float) -> dict[str, float]:
        """KL(q(a|x) || p(a)) / log|M|: the share of the memory's capacity the addresses use (address models)."""
        return {"memory_use": row["kl_address"] / log_m} if "kl_address" in row and log_m > 0 else {}

    width = len(str(tc.steps))

    def _check_finite(values: dict[str, float], step: int) -> None:
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingDiverged(
                f"step {step}: loss {values.get('loss')}, gradient norm {values.get('grad_norm')} are not finite; "
                f"the last checkpoint is {last_ckpt or latest_checkpoint(run_dir) or 'none'}: "
                f"lower optim.lr ({config.optim.lr}) or set optim.grad_clip")

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - run_t0

    def validate(step: int) -> None:
        nonlocal last_val, paused
        t0 = time.perf_counter()
        if context.is_main:
            core = unwrap(model)
            last_val = {"kind": "val", "step": step, **evaluate_bound(
                core, val_batches, samples=tc.val_samples, num_samples=tc.num_samples, chunk=tc.chunk,
                seed=tc.val_seed, device=device)}
            last_val.update(memory_use(last_val, log_eval_m))
            _append_jsonl(metrics_path, last_val)
            if writer is not None:
                writer.validation(last_val, step)
                writer.pictures(core, dataset, config, step)
            head = (f"NLL bound {last_val['nll_bound']:.2f} ± {last_val['nll_bound_stderr']:.2f} nats (K={tc.val_samples}, "
                    if "nll_bound" in last_val else "(")
            shown = {k: v for k, v in last_val.items() if k not in VAL_BOOKKEEPING and isinstance(v, float)}
            context.emit(f"val   step {step:>{width}} | {head}{last_val['episodes']} episodes of {config.data.eval_split}) | "
                         f"{describe_values(shown)}")
        paused += time.perf_counter() - t0

    def checkpoint(step: int) -> None:
        nonlocal last_ckpt, paused
        t0 = time.perf_counter()
        rngs = context.gather(rng_state(device))  # every rank's RNG state (a collective: all ranks call it)
        if context.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "config": config.to_dict(),
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng_by_rank": dict(enumerate(rngs)),
                "stream": stream.state_dict(),
                "world_size": context.world_size,
                "elapsed_s": elapsed(),
                "metrics": {k: v for k, v in last_train.items() if isinstance(v, (int, float, str))},
            }
            last_ckpt = save_checkpoint(checkpoint_path(run_dir, step), state)
            prune_checkpoints(run_dir, tc.keep_checkpoints)
        paused += time.perf_counter() - t0
        if context.report is not None:
            context.report(dict(last_train, step=step), last_ckpt if context.is_main else None)

    if ckpt is not None and start == tc.steps and (run_dir / FINAL_FILE).is_file():
        stream.close()
        context.emit(f"{run_dir} is complete at step {start}")
        return json.loads((run_dir / FINAL_FILE).read_text(encoding="utf-8"))
    if context.is_main and config.run.tensorboard:
        from varmem.distributed.tensorboard import RunWriter

        # a resumed run hides the events an interrupted attempt wrote after its checkpoint
        writer = RunWriter(run_dir / TENSORBOARD_DIR, purge_step=start + 1 if ckpt is not None else None)
    step = start
    try:
        for step in range(start + 1, tc.steps + 1):
            host = next(stream)
            indices = host.index.tolist()  # global episode indices: the noise keys of train.noise=episode
            batch = host.to(device, non_blocking=True)
            core = unwrap(model)
            obj = training_objective(core, batch, indices, tc.num_samples, noise=tc.noise, seed=tc.seed)
            optimizer.zero_grad(set_to_none=True)
            obj.loss.backward()
            context.reduce_gradients(core)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            if first_step_at is None:
                first_step_at = time.time()
            names, step_vector = step_values(obj, grad_norm)
            if window is None or names != window_names:
                if window is not None and window_steps:
                    raise RuntimeError(f"{type(core).__name__}: the objective's terms changed from {window_names} to {names}")
                window, window_names = torch.zeros_like(step_vector), names
            window += step_vector
            window_steps += 1

            is_log = step % tc.log_every == 0 or step == tc.steps
            is_ckpt = step % tc.checkpoint_every == 0 or step == tc.steps
            if is_log:
                seconds = time.perf_counter() - window_t0 - paused
                values = dict(zip(window_names, context.reduce_metrics(window / window_steps).tolist()))
                _check_finite(values, step)
                wait = stream.wait_seconds - window_wait0
                last_train = {
                    "kind": "train", "step": step, **values, **({"nll_bound": -values["bound"]} if "bound" in values else {}),
                    "lr": optimizer.param_groups[0]["lr"],
                    "episodes_per_s": window_steps * tc.episodes_per_step * context.world_size / max(seconds, 1e-9),
                    "data_wait": wait / max(seconds, 1e-9),
                    "eta_s": (tc.steps - step) * seconds / window_steps, "elapsed_s": elapsed(),
                    "process_cpu_s": time.process_time(),  # this process's CPU time so far (all its threads)
                    **memory_use(values, log_train_m),
                }
                if context.is_main:
                    _append_jsonl(metrics_path, last_train)
                if writer is not None:
                    writer.train(last_train, step)
                context.emit(
                    f"step {step:>{width}}/{tc.steps} | loss {values['loss']:.2f} | {describe_values(values)} | |g| {values['grad_norm']:.1f} | "
                    f"{last_train['episodes_per_s']:.1f} ep/s | wait {100 * last_train['data_wait']:.0f}% | "
                    f"ETA {_fmt_time(last_train['eta_s'])}")
                window.zero_()
                window_steps, paused = 0, 0.0
                window_t0, window_wait0 = time.perf_counter(), stream.wait_seconds
                if context.report is not None and context.report_logs and not is_ckpt:  # its time counts in the next window
                    context.report(dict(last_train), None)
            elif is_ckpt:  # never checkpoint a diverged model
                _check_finite(dict(zip(window_names, context.reduce_metrics(window / window_steps).tolist())), step)
            if (tc.val_every and step % tc.val_every == 0) or step == tc.steps:
                validate(step)
            if is_ckpt:
                checkpoint(step)
        if step == start and ckpt is not None:  # resumed at the last step: only the final validation is missing
            validate(step)
            last_ckpt = source
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    finally:
        stream.close()

    final = {
        "step": step,
        "steps": tc.steps,
        "run_dir": str(run_dir),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "resumed_from": start if ckpt else None,
        "elapsed_s": elapsed(),
        "started_at": started_at,  # Unix times: train() called, the first step of this call done
        "first_step_at": first_step_at,
        "world_size": context.world_size,
        "episodes_per_step": tc.episodes_per_step * context.world_size,  # the global batch: the sum over ranks
        "train": {k: v for k, v in last_train.items() if k != "kind"},
        "val": {k: v for k, v in last_val.items() if k != "kind"},
    }
    if context.is_main:
        atomic_write_text(run_dir / FINAL_FILE, json.dumps(final, indent=2) + "\n")
        if writer is not None:
            writer.hparams(config, final)
            writer.close()
        headline = (f"val NLL bound {last_val['nll_bound']:.2f} nats" if "nll_bound" in last_val
                    else f"val accuracy {last_val['accuracy']:.3f}" if "accuracy" in last_val else "no validation value")
        context.emit(f"done: step {step}, {headline}, {_fmt_time(final['elapsed_s'])} → {run_dir / FINAL_FILE}")
    return final


def unwrap(model: torch.nn.Module) -> FewShotModel:
    """The model inside a DDP-style wrapper (``.module``), or the model itself."""
    return getattr(model, "module", model)


def _check_resumable(config: RunConfig, ckpt: dict[str, Any], source: Path) -> None:
    """A resumed run must follow the same trajectory: only the fields in RESUMABLE_CHANGES may differ."""
    try:
        saved = RunConfig.from_dict(ckpt["config"], legacy=True)
    except ConfigError as exc:
        raise ConfigError(f"checkpoint {source} holds a config this version cannot read: {exc}") from None
    changed = [d for d in saved.differences(config) if d.split(":")[0] not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(f"cannot resume from {source}: the config differs in {'; '.join(changed)} "
                          f"(only {', '.join(RESUMABLE_CHANGES)} may change; start a new run directory instead)")
    if int(ckpt["step"]) > config.train.steps:
        raise ConfigError(f"checkpoint {source} is at step {ckpt['step']}, past train.steps={config.train.steps}")


