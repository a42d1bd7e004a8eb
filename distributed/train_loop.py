"""The training loop, a pure function of its config: ``train(config) -> final metrics``.

One loop for every setting: ``varmem train`` calls it in-process (rank 0 of 1), the Ray Train
worker calls the same function with a :class:`TrainContext` that carries its rank, world size,
device and report callback. Everything a run does follows from the config:

* seeds (distributed/seeding.py): torch, numpy and Python are seeded with ``train.seed`` before
  the model is built (the same initial parameters on every rank); the training noise is seeded per
  episode (``train.noise: episode``, the default: the same run whatever the number of workers) or
  per rank (``train.noise: rank``); episodes are a pure function of (dataset, spec, seed, index);
* steps (:meth:`Trainer.step`): ``EpisodeStream`` batch → ``model.objective(batch, K)`` →
  backward → the context's gradient all-reduce (a no-op in-process) → global-norm clipping → Adam;
* every ``log_every`` steps (:meth:`Trainer.log`) a progress line, a ``metrics.jsonl`` row and
  TensorBoard scalars; every ``val_every`` steps (:meth:`Trainer.validate`) the validation bound on
  fixed seeded episodes of the eval split, computed with its own forked torch RNG so that validating
  never changes the training trajectory, and TensorBoard pictures (one-shot samples, q(a|x));
* every ``checkpoint_every`` steps and at the end (:meth:`Trainer.checkpoint`) an atomic
  checkpoint holding model, optimizer, step, config, image shape, every rank's RNG states and the
  stream state; the newest ``keep_checkpoints`` are kept (distributed/rundir.py);
* ``resume=True`` continues from the newest checkpoint in the run directory exactly: the same
  episodes, the same noise, the same parameters, step for step, as a run that never stopped;
* ``train.cpu_budget_s`` (:meth:`Trainer.budget_spent`) ends the run at the first step boundary where its CPU
  time (``cpu_s``: this session's process time since :func:`train` was called, every thread, validation and
  checkpoints included, plus the earlier sessions' from the checkpoint; summed over ranks) reaches the budget,
  with the final validation and checkpoint of a run that reached ``train.steps``.

The run directory's files are listed in distributed/rundir.py.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from varmem.distributed.config import RunConfig, RunDirError, TrainingDiverged, atomic_write_text
from varmem.distributed.resume import check_run
from varmem.distributed.run import build_model, build_optimizer, resolve_device
from varmem.distributed.rundir import (
    CHECKPOINT_DIR, CHECKPOINT_FORMAT, FINAL_FILE, METRICS_FILE, TENSORBOARD_DIR, append_jsonl, checkpoint_path,
    clear_run_dir, latest_checkpoint, prune_checkpoints, save_checkpoint, truncate_metrics,
)
from varmem.distributed.seeding import episode_noise_seed, noise_seed, rng_state, seed_everything, set_rng_state
from varmem.distributed.validation import validation_batches
from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DiskFullError
from varmem.episodes.sampler import EpisodeBatch
from varmem.episodes.stream import EpisodeStream
from varmem.models.base import Batch, FewShotModel, Objective
from varmem.models.eval.bound import evaluate_bound
from varmem.models.networks import set_channels_last, set_shared_skip_convs
from varmem.progress import format_duration, milestones

# Keys of a validation row that are bookkeeping, not the model's values.
VAL_BOOKKEEPING = ("kind", "step", "samples", "objective_samples", "episodes", "nll_bound", "nll_bound_stderr", "accuracy_stderr")
# A validation that takes longer than this says how far it is, every tenth of its episodes (a user's
# final validation of a paper-size model printed nothing for 7.5 minutes).
VALIDATION_PROGRESS_AFTER_S = 10.0


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


# --- one step's objective and values ----------------------------------------------------------


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


def step_values(obj: Objective, grad_norm: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The names and values (one float64 vector, no device sync) a step adds to its logging window:
    the loss, the bound when the family has one, the family's terms by name, the gradient norm."""
    names = ["loss"] + (["bound"] if obj.bound is not None else []) + list(obj.terms) + ["grad_norm"]
    values = [obj.loss.detach()] + ([obj.bound.detach().mean()] if obj.bound is not None else [])
    values += [t.detach().float().mean() for t in obj.terms.values()] + [grad_norm.detach()]
    return names, torch.stack([v.to(torch.float64) for v in values])


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` with the global norm accumulated in float64; returns it (float64).

    In float32 the sum of squares overflows to inf once a gradient entry passes ~1.8e19, although every
    entry is finite: a spike that clipping exists to absorb was reported as a non-finite gradient and
    its step was thrown away (clip coefficient 0) — the sequential model at T = 64 met one after spikes of
    1e11–1e15 that clipping had absorbed. In float64 such a gradient has a finite norm and is scaled to
    ``max_norm`` like any other (inf: no clipping); a gradient that holds inf or NaN still gives a
    non-finite norm. Parameters without a gradient are skipped."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads]))
    if math.isfinite(max_norm):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype))
    return norm


def describe_values(values: dict[str, float]) -> str:
    """``bound -92.10 | KL(a) 0.512 | ...``: a progress line's view of a family's logged values."""
    parts = []
    for name, value in values.items():
        if name in ("loss", "grad_norm", "nll_bound"):
            continue
        label = {"kl_address": "KL(a)", "kl_latent": "KL(z)"}.get(name, name)
        parts.append(f"{label} {value:.3f}" if abs(value) < 10 else f"{label} {value:.2f}")
    return " | ".join(parts)


def memory_use(row: dict[str, Any], log_m: float) -> dict[str, float]:
    """KL(q(a|x) || p(a)) / log|M|: the share of the memory's capacity the addresses use (address models)."""
    return {"memory_use": row["kl_address"] / log_m} if "kl_address" in row and log_m > 0 else {}


def unwrap(model: torch.nn.Module) -> FewShotModel:
    """The model inside a DDP-style wrapper (``.module``), or the model itself."""
    return getattr(model, "module", model)


# --- the loop ---------------------------------------------------------------------------------


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
    started_at, cpu_t0 = time.time(), time.process_time()
    context = context or TrainContext()
    config = config.resolve_paths()
    device = resolve_device(context.device, config)
    dataset, source, ckpt = check_run(config, resume=resume, overwrite=overwrite)  # nothing written yet
    trainer = Trainer(config, dataset, ckpt, context, device)  # the state at the step the run starts from
    trainer.cpu_t0 = cpu_t0  # the run's CPU time counts from the call: the dataset check and the model build included
    try:
        return _run(trainer, source, clear=overwrite and not resume, started_at=started_at)
    except (DiskFullError, RunDirError) as exc:  # a full disk, no permission: one line, the checkpoints intact
        raise trainer.write_failed(exc) from None


def _run(trainer: "Trainer", source: Path | None, *, clear: bool, started_at: float) -> dict[str, Any]:
    """The steps of :func:`train` from the trainer's start to ``train.steps``; the final metrics."""
    tc = trainer.tc
    trainer.prepare_run_dir(clear=clear)
    # a resumed run that had reached train.steps or train.cpu_budget_s: nothing to train (budget_spent: a collective)
    ended = trainer.resumed and (trainer.start == tc.steps or trainer.budget_spent())
    final = trainer.final_metrics() if ended else None
    if final is not None:
        return trainer.complete(final)
    trainer.open_writer()
    step = trainer.start
    try:
        for step in range(trainer.start + 1, tc.steps + 1) if not ended else ():
            trainer.step()
            last = step == tc.steps or trainer.budget_spent()  # the first step boundary at train.cpu_budget_s ends it too
            is_ckpt = step % tc.checkpoint_every == 0 or last
            if step % tc.log_every == 0 or last:
                trainer.log(step, report=not is_ckpt)  # a checkpoint reports with its own metrics
            elif is_ckpt:  # never checkpoint a diverged model
                trainer.check_finite(trainer.window.means(trainer.context), step)
            if (tc.val_every and step % tc.val_every == 0) or last:
                trainer.validate(step)
            if is_ckpt:
                trainer.checkpoint(step)
            if last:
                break
        if step == trainer.start and trainer.resumed:  # resumed at the last step: only the final validation is missing
            trainer.validate(step)
            trainer.last_ckpt = source
    except BaseException:
        trainer.close_writer()
        raise
    finally:
        trainer.stream.close()
    return trainer.finish(step, started_at)


class LogWindow:
    """The steps since the last log line: the sums of their :func:`step_values`, their wall-clock
    time, the share of it spent waiting for episodes, and the pauses (validation, checkpoints) in it.

    A checkpoint inside a window saves its state (:meth:`state_dict`, every rank's) and a resume restores
    it, so that a ``metrics.jsonl`` row whose window spans the resume holds the values of a run that never
    stopped (the sums are float64, added in the same order: equal to the last bit). Its timings (seconds,
    data wait) carry the time before the checkpoint, not the time the run was stopped."""

    def __init__(self, stream: EpisodeStream):
        self.stream = stream
        self.sums: torch.Tensor | None = None  # float64 [values]
        self.names: list[str] = []
        self.reset()

    def reset(self) -> None:
        if self.sums is not None:
            self.sums.zero_()
        self.steps, self.carried_s, self.carried_wait = 0, 0.0, 0.0
        self.restart_clock()

    def restart_clock(self) -> None:
        """Time from now on (the steps and sums so far kept): a new window, or a resumed one."""
        self.paused, self.t0, self.wait0 = 0.0, time.perf_counter(), self.stream.wait_seconds

    def state_dict(self) -> dict[str, Any]:
        """The window so far, for a checkpoint: names, float64 sums (on the CPU), steps, seconds, data wait."""
        return {"names": list(self.names), "sums": None if self.sums is None else self.sums.detach().cpu().clone(),
                "steps": self.steps, "seconds": self.seconds(), "data_wait": self.data_wait()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.names = list(state["names"])
        self.sums = None if state["sums"] is None else state["sums"].to(device=device, dtype=torch.float64)
        self.steps, self.carried_s, self.carried_wait = int(state["steps"]), float(state["seconds"]), float(state["data_wait"])
        self.restart_clock()

    def add(self, names: list[str], values: torch.Tensor, family: str) -> None:
        if self.sums is None or names != self.names:
            if self.sums is not None and self.steps:
                raise RuntimeError(f"{family}: the objective's terms changed from {self.names} to {names}")
            self.sums, self.names = torch.zeros_like(values), names
        self.sums += values
        self.steps += 1

    def means(self, context: TrainContext) -> dict[str, float]:
        """The window's mean values over its steps and the ranks (a collective: every rank calls it)."""
        return dict(zip(self.names, context.reduce_metrics(self.sums / self.steps).tolist()))

    def seconds(self) -> float:
        """Training time in the window: wall-clock less the pauses (and the time before a resume)."""
        return self.carried_s + time.perf_counter() - self.t0 - self.paused

    def data_wait(self) -> float:
        return self.carried_wait + self.stream.wait_seconds - self.wait0


class Trainer:
    """The state of one call of :func:`train` between its steps: model, optimizer, episode stream,
    logging window, the last logged values, TensorBoard writer. Built at the step the run starts from
    (0, or its checkpoint's, with the checkpoint's parameters, optimizer, stream and RNG states)."""

    def __init__(self, config: RunConfig, dataset: Dataset, ckpt: dict[str, Any] | None, context: TrainContext,
                 device: torch.device):
        self.config, self.dataset, self.context, self.device = config, dataset, context, device
        tc = self.tc = config.train
        self.run_dir = Path(config.run.out)
        self.resumed = ckpt is not None
        self.start = int(ckpt["step"]) if ckpt else 0
        if tc.threads:
            torch.set_num_threads(tc.threads)
        seed_everything(tc.seed)  # the same initial parameters on every rank
        self.model = build_model(config, dataset.image_shape).to(device)
        # the step's speed-ups (issue 17), the same numerics up to float rounding (models/networks.py)
        set_shared_skip_convs(self.model, tc.shared_skip_convs)
        set_channels_last(self.model, tc.channels_last)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]  # the trainable ones
        seed_everything(noise_seed(tc.seed, context.rank))  # the training noise: per rank
        self.stream = EpisodeStream(dataset, config.train_spec(), seed=tc.seed, rank=context.rank,
                                    world_size=context.world_size, batch=tc.episodes_per_step,
                                    pin_memory=device.type == "cuda")
        self.elapsed_before = 0.0
        # train.cpu_budget_s: this session's process time counts from cpu_t0 (train() sets it to its call); the
        # earlier sessions' sum (the checkpoint's cpu_s) is rank 0's share, so that the sum over ranks counts it once
        self.cpu_t0, self.cpu_before, self.cpu_at_start = time.process_time(), 0.0, 0.0
        if ckpt is not None:
            self._restore(ckpt)
        elif tc.init_from:  # a fresh run from another run's weights; the config records the exact source
            from varmem.distributed.init_from import initialize

            self.config = initialize(self.model, config, dataset.image_shape, context.emit)
        self.model = context.prepare_model(self.model)
        self.val_batches = validation_batches(dataset, config, tc.val_episodes, tc.val_seed) if context.is_main else []
        self.max_norm = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
        self.log_m = {"train": math.log(config.train_spec().memory_size), "val": math.log(config.eval_spec().memory_size)}
        self.width = len(str(tc.steps))
        # the last logged training row: a run resumed at its last step (a Ray worker group restarted after the
        # final checkpoint) reports the one its checkpoint holds
        self.last_train: dict[str, Any] = dict((ckpt or {}).get("metrics") or {})
        self.last_val: dict[str, Any] = {}
        self.last_ckpt: Path | None = None
        self.writer = None  # TensorBoard events (rank 0, run.tensorboard)
        self.first_step_at: float | None = None
        self.run_t0 = time.perf_counter()
        self.window = LogWindow(self.stream)
        window = (ckpt or {}).get("window_by_rank", {}).get(context.rank)
        if window is not None:  # a checkpoint inside a logging window: its steps so far (older checkpoints: none)
            self.window.load_state_dict(window, device)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.stream.load_state_dict(ckpt["stream"])
        rng = ckpt["rng_by_rank"].get(self.context.rank)
        if rng is not None:
            set_rng_state(rng, self.device)
        else:  # a rank the checkpoint has no state for (a new world size): a fresh, config-derived stream
            seed_everything(noise_seed(self.tc.seed + self.start, self.context.rank))
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        self.cpu_at_start = float(ckpt.get("cpu_s", 0.0))  # checkpoints older than train.cpu_budget_s: 0
        self.cpu_before = self.cpu_at_start if self.context.is_main else 0.0

    def write_failed(self, exc: BaseException) -> RunDirError:
        """A failed write of the run directory as one line: what failed (the path, the space needed and free),
        then what is intact and how to go on."""
        newest = latest_checkpoint(self.run_dir) if self.context.is_main else None
        intact = (f"the checkpoints up to {newest.name} are intact" if newest is not None
                  else "no checkpoint of this run was written yet")
        return RunDirError(f"{exc}; {intact}: continue with varmem train --resume --out {self.run_dir}"
                           if newest is not None else f"{exc}; {intact}")

    def elapsed(self) -> float:
        """Training seconds of the run so far, the attempts before a resume included."""
        return self.elapsed_before + time.perf_counter() - self.run_t0

    def local_cpu_seconds(self) -> float:
        """This rank's share of the run's CPU seconds: its process time since train() was called (every thread)
        plus, on rank 0, the earlier sessions' sum."""
        return self.cpu_before + time.process_time() - self.cpu_t0

    def cpu_seconds(self) -> float:
        """The run's CPU seconds so far, every session and every rank (the sum of :meth:`local_cpu_seconds` over
        ranks through the metrics reduction: a collective, every rank calls it)."""
        local = self.local_cpu_seconds()
        if self.context.world_size == 1:
            return local
        share = torch.tensor([local], dtype=torch.float64, device=self.device)
        return float(self.context.reduce_metrics(share)[0]) * self.context.world_size  # the mean over ranks × ranks

    def budget_spent(self) -> bool:
        """Whether the run's CPU seconds have reached train.cpu_budget_s (never without one; a collective with one)."""
        budget = self.tc.cpu_budget_s
        return budget is not None and self.cpu_seconds() >= budget

    def steps_left(self, step: int, cpu: float) -> int:
        """Steps to train.steps, or fewer: to train.cpu_budget_s at this session's CPU seconds per step so far."""
        left, budget, done = self.tc.steps - step, self.tc.cpu_budget_s, step - self.start
        if budget is not None and done > 0:
            per_step = max(cpu - self.cpu_at_start, 1e-9) / done
            left = min(left, math.ceil(max(budget - cpu, 0.0) / per_step))
        return left

    # --- before the first step ---
    def prepare_run_dir(self, *, clear: bool) -> None:
        """Rank 0: the run directory with this run's config, nothing of a discarded attempt (``clear``:
        ``--overwrite``); a resumed run's metrics cut at its checkpoint. Then the opening lines."""
        run_dir, metrics = self.run_dir, self.run_dir / METRICS_FILE
        if self.context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if clear:
                clear_run_dir(run_dir)
            if not self.resumed:  # a fresh run: no events of an earlier attempt
                shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
            for stale in (run_dir / CHECKPOINT_DIR).glob("*.tmp"):
                stale.unlink(missing_ok=True)
            self.config.save(run_dir)
            if self.resumed:
                truncate_metrics(metrics, self.start)
            else:
                metrics.unlink(missing_ok=True)
        tc, spec, ctx = self.tc, self.config.train_spec(), self.context
        n_params = sum(p.numel() for p in self.params)
        ctx.emit(f"{'resuming' if self.resumed else 'training'} {type(unwrap(self.model)).__name__} ({n_params:,} parameters) "
                 f"on {self.device} for steps {self.start + 1}..{tc.steps} → {run_dir}")
        ctx.emit(f"  episodes: {spec.ways}-way, {spec.shots} shots, {spec.targets} targets, {tc.episodes_per_step}×"
                 f"{ctx.world_size} = {tc.episodes_per_step * ctx.world_size} per step from {self.dataset.directory.name}/"
                 f"{self.dataset.resolve_split(self.config.data.train_split)}; K={tc.num_samples}; noise per {tc.noise}")
        self.run_t0 = time.perf_counter()
        self.window.restart_clock()

    def final_metrics(self) -> dict[str, Any] | None:
        """The run directory's final metrics, if it holds a readable final_metrics.json (else the run is not
        complete: the last step's validation and final metrics are written again)."""
        try:
            final = json.loads((self.run_dir / FINAL_FILE).read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        return final if isinstance(final, dict) else None

    def complete(self, final: dict[str, Any]) -> dict[str, Any]:
        """A resumed run that had already finished: its final metrics, nothing trained."""
        self.stream.close()
        self.context.emit(f"{self.run_dir} is complete at step {self.start}")
        return final

    def open_writer(self) -> None:
        if self.context.is_main and self.config.run.tensorboard:
            from varmem.distributed.tensorboard import RunWriter

            # a resumed run hides the events an interrupted attempt wrote after its checkpoint
            self.writer = RunWriter(self.run_dir / TENSORBOARD_DIR, purge_step=self.start + 1 if self.resumed else None)

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()

    # --- the steps ---
    def step(self) -> None:
        """One optimizer step on the stream's next batch; its values join the logging window."""
        tc = self.tc
        host = next(self.stream)
        indices = host.index.tolist()  # global episode indices: the noise keys of train.noise=episode
        batch = host.to(self.device, non_blocking=True)
        core = unwrap(self.model)
        obj = training_objective(core, batch, indices, tc.num_samples, noise=tc.noise, seed=tc.seed)
        self.optimizer.zero_grad(set_to_none=True)
        obj.loss.backward()
        self.context.reduce_gradients(core)
        grad_norm = clip_gradients(self.params, self.max_norm)
        self.optimizer.step()
        if self.first_step_at is None:
            self.first_step_at = time.time()
        self.window.add(*step_values(obj, grad_norm), type(core).__name__)

    def check_finite(self, values: dict[str, float], step: int) -> None:
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingDiverged(
                f"step {step}: loss {values.get('loss')}, gradient norm {values.get('grad_norm')} are not finite; "
                f"the last checkpoint is {self.last_ckpt or latest_checkpoint(self.run_dir) or 'none'}: "
                f"lower optim.lr ({self.config.optim.lr}) or set optim.grad_clip")

    def log(self, step: int, *, report: bool) -> None:
        """The logging window's means (over steps and ranks) as a progress line, a metrics.jsonl row and
        TensorBoard scalars; then a new window. ``report``: also to the context's report callback."""
        tc, ctx, window = self.tc, self.context, self.window
        seconds = window.seconds()
        values = window.means(ctx)
        self.check_finite(values, step)
        cpu = self.cpu_seconds()  # a collective, like the means
        self.last_train = {
            "kind": "train", "step": step, **values, **({"nll_bound": -values["bound"]} if "bound" in values else {}),
            "lr": self.optimizer.param_groups[0]["lr"],
            "episodes_per_s": window.steps * tc.episodes_per_step * ctx.world_size / max(seconds, 1e-9),
            "data_wait": window.data_wait() / max(seconds, 1e-9),
            "eta_s": self.steps_left(step, cpu) * seconds / window.steps, "elapsed_s": self.elapsed(),
            "process_cpu_s": time.process_time(),  # this process's CPU time so far (all its threads)
            "cpu_s": cpu,  # the run's CPU time so far: every session, every rank (train.cpu_budget_s)
            **memory_use(values, self.log_m["train"]),
        }
        if ctx.is_main:
            append_jsonl(self.run_dir / METRICS_FILE, self.last_train)
        if self.writer is not None:
            self.writer.train(self.last_train, step)
        row = self.last_train
        ctx.emit(f"step {step:>{self.width}}/{tc.steps} | loss {values['loss']:.2f} | {describe_values(values)} | "
                 f"|g| {values['grad_norm']:.1f} | {row['episodes_per_s']:.1f} ep/s | wait {100 * row['data_wait']:.0f}% | "
                 f"ETA {format_duration(row['eta_s'])}"
                 + (f" | CPU {format_duration(cpu)}/{format_duration(tc.cpu_budget_s)}" if tc.cpu_budget_s is not None else ""))
        window.reset()
        if report and ctx.report is not None and ctx.report_logs:  # its time counts in the next window
            ctx.report(dict(self.last_train), None)

    def validate(self, step: int) -> None:
        """Rank 0: the validation bound on the fixed episodes (a metrics.jsonl row, TensorBoard values and
        pictures, a line; a line per tenth of the episodes when it takes long). Its time is a pause."""
        t0 = time.perf_counter()
        tc, ctx = self.tc, self.context
        if ctx.is_main:
            core = unwrap(self.model)
            split = self.dataset.resolve_split(self.config.data.eval_split)  # a role → the dataset's split
            progress = milestones(tc.val_episodes, ctx.emit, label=f"  validating step {step} on {split}: ",
                                  after_s=VALIDATION_PROGRESS_AFTER_S)
            self.last_val = row = {"kind": "val", "step": step, **evaluate_bound(
                core, self.val_batches, samples=tc.val_samples, num_samples=tc.num_samples, chunk=tc.chunk,
                seed=tc.val_seed, device=self.device, progress=progress)}
            row.update(memory_use(row, self.log_m["val"]))
            append_jsonl(self.run_dir / METRICS_FILE, row)
            if self.writer is not None:
                self.writer.validation(row, step)
                self.writer.pictures(core, self.dataset, self.config, step)
            head = (f"NLL bound {row['nll_bound']:.2f} ± {row['nll_bound_stderr']:.2f} nats (K={tc.val_samples}, "
                    if "nll_bound" in row else "(")
            shown = {k: v for k, v in row.items() if k not in VAL_BOOKKEEPING and isinstance(v, float)}
            ctx.emit(f"val   step {step:>{self.width}} | {head}{row['episodes']} episodes of {split}) | "
                     f"{describe_values(shown)}")
        self.window.paused += time.perf_counter() - t0

    def checkpoint(self, step: int) -> None:
        """Every rank's RNG states gathered (a collective), rank 0 writes ``ckpt-<step>.pt`` atomically and
        prunes the oldest; then every rank reports (rank 0 with the checkpoint). Its time is a pause."""
        t0 = time.perf_counter()
        ctx = self.context
        ranks = ctx.gather({"rng": rng_state(self.device), "window": self.window.state_dict(),  # every rank's
                            "cpu_s": self.local_cpu_seconds()})
        if ctx.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "config": self.config.to_dict(),
                "image_shape": tuple(int(n) for n in self.dataset.image_shape),  # (H, W): the model builds without the dataset
                "model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng_by_rank": {rank: state["rng"] for rank, state in enumerate(ranks)},
                "window_by_rank": {rank: state["window"] for rank, state in enumerate(ranks)},  # the logging window so far
                "stream": self.stream.state_dict(),
                "world_size": ctx.world_size,
                "elapsed_s": self.elapsed(),
                # the run's CPU seconds (train.cpu_budget_s): every session so far, every rank's share; a resume adds to it
                "cpu_s": sum(state["cpu_s"] for state in ranks),
                "cpu_s_by_rank": {rank: state["cpu_s"] for rank, state in enumerate(ranks)},
                "metrics": {k: v for k, v in self.last_train.items() if isinstance(v, (int, float, str))},
            }
            self.last_ckpt = save_checkpoint(checkpoint_path(self.run_dir, step), state)
            prune_checkpoints(self.run_dir, self.tc.keep_checkpoints)
        self.window.paused += time.perf_counter() - t0
        if ctx.report is not None:
            ctx.report(dict(self.last_train, step=step), self.last_ckpt if ctx.is_main else None)

    # --- the end ---
    def finish(self, step: int, started_at: float) -> dict[str, Any]:
        """The final metrics; rank 0 writes them (``final_metrics.json``, TensorBoard hparams) and says so."""
        ctx, last_val = self.context, self.last_val
        final = {
            "step": step,
            "steps": self.tc.steps,
            "stopped_by": "steps" if step >= self.tc.steps else "cpu_budget",  # the loop ends early only at the budget
            "cpu_s": self.cpu_seconds(),  # every session, every rank, the final validation included (a collective)
            "cpu_budget_s": self.tc.cpu_budget_s,
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.last_ckpt) if self.last_ckpt else None,
            "resumed_from": self.start if self.resumed else None,
            "elapsed_s": self.elapsed(),
            "started_at": started_at,  # Unix times: train() called, the first step of this call done
            "first_step_at": self.first_step_at,
            "world_size": ctx.world_size,
            "episodes_per_step": self.tc.episodes_per_step * ctx.world_size,  # the global batch: the sum over ranks
            "train": {k: v for k, v in self.last_train.items() if k != "kind"},
            "val": {k: v for k, v in last_val.items() if k != "kind"},
        }
        if ctx.is_main:
            atomic_write_text(self.run_dir / FINAL_FILE, json.dumps(final, indent=2) + "\n")
            if self.writer is not None:
                self.writer.hparams(self.config, final)
            self.close_writer()
            headline = (f"val NLL bound {last_val['nll_bound']:.2f} nats" if "nll_bound" in last_val
                        else f"val accuracy {last_val['accuracy']:.3f}" if "accuracy" in last_val else "no validation value")
            ctx.emit(f"done: step {step}, {headline}, {format_duration(final['elapsed_s'])} → {self.run_dir / FINAL_FILE}")
        return final
