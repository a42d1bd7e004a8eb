"""The evaluation protocol of a trained few-shot generative model (Bornschein et al. 2017, §4).

``evaluate(run)`` takes a :class:`varmem.distributed.train_loop.LoadedRun` and measures, on the run's
eval split, with fixed seeded episodes:

* **NLL vs examples** (the paper's Table 1, C = 1): memory = n examples of ONE class, the
  target another example of that class, n in 1, 2, 3, 4, 5, 10, 19; −log p(x|M) bounded with
  K importance samples (``log_likelihood``, 1,000 by default, up to 5,000). A row is skipped,
  with the reason, when the split's classes do not hold n + 1 images.
* **NLL vs classes**: memory = C classes × ``examples_per_class`` examples, C = 1, 2, 4, 8, …
  up to what the split holds; targets from those classes. Beside each row, the optimum of a
  perfect model of C disjoint classes: p(x|M) = (1/C) p(x|M_c), so
  ``optimum(C) = NLL(C=1) + log C`` with the model's own C = 1 value.
* **Few-shot classification** without fine-tuning, N-way K-shot (5/20-way, 1/5-shot), one
  query per class, ≥ 1,000 episodes, two readings of the generative model:

  - ``q_a``: p(c|x) ≈ Σ_{a: label(a) = c} q(a|x)  (families with the address posterior; VMA §4.3)
  - ``likelihood``: p(c|x) ∝ p(x|M_c), M_c = class c's support only (every model that reads
    the episode's memory; N ``log_likelihood`` calls per target, so fewer samples)

  Accuracy with a 95% confidence interval: ``ci95`` is the half-width 1.96·s/√E over the E
  per-episode accuracies (the few-shot literature's convention; it accounts for the targets of
  one episode sharing a support set); ``wilson95`` is the Wilson score interval over all
  targets taken as independent trials (still informative when every episode scores 1.0).
  Ties between classes (a uniform q(a|x)) are broken at random, seeded, not towards class 0.
* **Lake's runs**: the 20 official 20-way 1-shot episodes (a ``lake-runs`` dataset directory).
* **Pictures** (PNG, atomic): one-shot sample grids, q(a|x)'s top-5 memory entries for a few
  targets, and the two NLL tables as line plots, drawn with Pillow (no plotting dependency).

Memory stays bounded whatever K is: each ``log_likelihood`` call holds at most
:data:`DECODES_PER_PASS` (target, sample) decoder evaluations per chunk (the models merge
chunks with a running log-sum-exp) and, unless one episode is larger, at most
:data:`IMAGES_PER_PASS` memory and target images.

Determinism: episodes are pure functions of (dataset, spec, seed, episode index)
(:class:`varmem.episodes.sampler.EpisodeSampler`); the importance samples of each table row (each
classification task) are drawn from torch's global RNG seeded from (seed, row or task) under
``torch.random.fork_rng``, so the caller's RNG is untouched and two evaluations of the same run
with the same arguments give identical numbers. The global RNG (not a ``generator=`` argument)
serves every model behind ``varmem.models.base``'s interface, including ``model.factory`` models whose
methods take no generator.
"""
from __future__ import annotations

import contextlib
import math
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.sampler import EpisodeBatch, EpisodeSampler, LakeRunEpisodes
from varmem.episodes.show import BG, SEP, labelled, save_png, tile, upscale
from varmem.episodes.spec import EpisodeSpec
from varmem.models.base import Batch, Capability, argmax_random_ties

# The paper's Table 1 columns: examples of one class in memory.
DEFAULT_EXAMPLES = (1, 2, 3, 4, 5, 10, 19)
# (ways, shots) of the classification table (VMA §4.3: 91% / 97% / 77% / 90%).
DEFAULT_TASKS = ((5, 1), (5, 5), (20, 1), (20, 5))
METHODS = ("q_a", "likelihood")
TABLES = ("examples", "classes")  # NLL vs examples of one class, NLL vs classes in memory
Z95 = 1.959963984540054  # Φ^{-1}(0.975)

# Per ``log_likelihood`` pass: (target, sample) decoder evaluations per chunk, by device type.
# CPU: measured with the strokes VMA config (configs/vma_strokes.yaml: conv 16–32 maps, |z| = 32,
# 26×26), random parameters, 1 thread on the shared 2-core machine (load ≈ 3): 64 / 256 / 512 /
# 1,024 / 4,096 / 16,384 decodes per pass took 475 / 410–460 / 547 / 650–850 / 671 / 1,110 µs
# per decode with peak RSS 378 / 438 / 517 / 735 / 1,552 / 4,982 MB; 256 is the fastest and
# smallest. CUDA: not measured (no GPU in that session); 8,192 keeps that decoder's activations
# near 1 GB and is meant to fill the device. Other devices get the CPU value.
DECODES_PER_PASS = {"cpu": 256, "cuda": 8192}
# Memory and target images through the encoders per pass (one pass is never split below one
# episode, so a memory larger than this still goes through in one piece).
IMAGES_PER_PASS = 2048

# Targets per episode in the NLL-vs-classes table: targets come from min(C, this) of the C
# memory classes (the rest are memory-only classes), so a row's cost does not grow with C.
CLASS_TABLE_TARGETS = 8

PROGRESS_EVERY_S = 5.0


# =============================================================================================
# small pieces: seeds, devices, progress, confidence intervals
# =============================================================================================


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed from ``seed`` and tags (ints or strings): the noise of one pass of one table."""
    words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    for t in tags:
        words.append(zlib.crc32(t.encode()) if isinstance(t, str) else int(t) & 0xFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _device(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global RNG (CPU and ``device``) seeded with ``seed``; the caller's state restored after."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was = model.training if isinstance(model, torch.nn.Module) else False
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was)


class _Progress:
    """Progress lines for long loops: at most one every ``every`` seconds, and the last one."""

    def __init__(self, emit: Callable[[str], None] | None, every: float = PROGRESS_EVERY_S):
        self.emit, self.every = emit, every
        self._last = time.perf_counter()

    def say(self, line: str) -> None:
        if self.emit is not None:
            self.emit(line)
            self._last = time.perf_counter()

    def tick(self, what: str, done: int, total: int, t0: float) -> None:
        now = time.perf_counter()
        if self.emit is not None and now - self._last >= self.every and done < total:
            self.say(f"  {what}: {done}/{total} episodes ({now - t0:.0f} s)")


def _as_progress(progress: Callable[[str], None] | _Progress | None) -> _Progress:
    return progress if isinstance(progress, _Progress) else _Progress(progress)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)."""
    if trials < 1:
        return (float("nan"), float("nan"))
    n, p = float(trials), successes / float(trials)
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def accuracy_summary(correct: Sequence[np.ndarray] | np.ndarray) -> dict[str, Any]:
    """Accuracy of per-episode boolean arrays of correct targets, with 95% intervals.

    ``accuracy``: correct / targets; ``ci95``: Z95 · s / √E, s the sample standard deviation of
    the E per-episode accuracies (None for E < 2); ``wilson95``: Wilson over all targets.
    """
    rows = [np.asarray(c, dtype=bool).reshape(-1) for c in correct]
    if not rows:
        raise ValueError("accuracy_summary: no episodes")
    k = int(sum(r.sum() for r in rows))
    n = int(sum(r.size for r in rows))
    per_episode = np.array([r.mean() for r in rows], dtype=np.float64)  # [E]
    E = len(rows)
    ci = float(Z95 * per_episode.std(ddof=1) / math.sqrt(E)) if E > 1 else None
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n, "ci95": ci, "wilson95": [lo, hi], "episodes": E, "targets": n}


def _spec_problem(spec: EpisodeSpec, dataset: Dataset) -> str | None:
    """Why ``dataset`` cannot supply episodes of ``spec``, or None when it can."""
    try:
        spec.check_against(dataset.split(spec.split), f"split {spec.split!r}")
    except DataError as exc:
        return str(exc)
    return None


def _reads_episode_memory(model) -> bool:
    """True when the model conditions on the episode's memory (not the VAE, not a learned memory)."""
    config = getattr(model, "config", None)
    return bool(getattr(model, "uses_memory", True)) and getattr(config, "memory", "episode") != "learned"


def methods_for(model) -> dict[str, str | None]:
    """Each classification method: None when the model supports it, else why not."""
    episode_memory = _reads_episode_memory(model)
    why_memory = (f"{type(model).__name__} does not read the episode's memory"
                  + (" (learned memory)" if getattr(model, "uses_memory", True) else ""))
    return {
        "q_a": None if model.supports(Capability.ADDRESS) and model.supports(Capability.CLASSIFICATION) and episode_memory
        else (why_memory if not episode_memory else f"the {model.family!r} family has no address posterior q(a|x)"),
        "likelihood": None if episode_memory and model.supports(Capability.LIKELIHOOD)
        else (why_memory if not episode_memory else f"the {model.family!r} family has no likelihood"),
    }


def _log_likelihood(model, memory, targets, samples: int, chunk: int, exact_address: bool) -> torch.Tensor:
    """``model.log_likelihood`` [G, T]; ``exact_address`` only where the model's method takes it."""
    batch = Batch(memory, targets)
    if exact_address:
        if not model.supports(Capability.ADDRESS):
            raise ValueError(f"exact_address=True: the {model.family!r} family has no address to sum over")
        return model.log_likelihood(batch, samples, chunk=chunk, exact_address=True)
    return model.log_likelihood(batch, samples, chunk=chunk)


def decodes_per_pass(device: torch.device) -> int:
    return DECODES_PER_PASS.get(device.type, DECODES_PER_PASS["cpu"])


def _pass_shape(targets: int, images: int, samples: int, chunk: int, device: torch.device) -> tuple[int, int]:
    """(episodes per pass, samples per chunk): a pass holds ≤ :func:`decodes_per_pass` decodes
    and ≤ IMAGES_PER_PASS images (at least one episode and one sample, whatever the sizes)."""
    budget = decodes_per_pass(device)
    chunk = max(1, min(chunk, samples, budget // max(1, targets)))
    per_pass = max(1, min(budget // max(1, targets * chunk), IMAGES_PER_PASS // max(1, images)))
    return per_pass, chunk


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"evaluation: {name} must be an int >= 1, got {v!r}")


# =============================================================================================
# NLL tables
# =============================================================================================


# K of the objective whose terms (KL parts) the tables report beside each row: their expectations do
# not depend on K (KL(a) is exact; KL(z) is averaged over the sampled addresses), only their noise.
OBJECTIVE_SAMPLES = 4


def _objective_samples(model) -> int:
    return max(OBJECTIVE_SAMPLES, model.min_num_samples)


def nll_over_episodes(model, sampler: EpisodeSampler, episodes: int, *, samples: int, chunk: int = 100, seed: int = 0,
                      exact_address: bool = False, progress=None, what: str = "nll") -> dict[str, Any]:
    """The K-sample NLL bound over episodes 0..episodes−1 of ``sampler``, with KL(q(a|x)||p(a))
    (None for models without an address) and KL(q(z)||p(z)) from the objective.

    ``nll`` is the mean over targets; ``stderr`` the standard error over the per-episode means.
    """
    parts = _paired_passes(model, sampler, episodes, [("all", lambda b: (b.memory, b.targets), True)], samples=samples,
                           chunk=chunk, seed=seed, exact_address=exact_address, progress=progress, what=what)
    return _row(model, parts["all"], samples)


def examples_that_fit(dataset: Dataset, split: str, examples: Sequence[int] = DEFAULT_EXAMPLES) -> tuple[list[int], list[str]]:
    """(the n of ``examples`` whose episodes — n examples + 1 target of one class — the split supplies,
    a line per skipped n saying why)."""
    fit, skipped = [], []
    for n in examples:
        problem = _spec_problem(EpisodeSpec(split=split, ways=1, shots=int(n), targets=1), dataset)
        if problem is None:
            fit.append(int(n))
        else:
            skipped.append(f"NLL vs examples: n={n} skipped: {problem}")
    return fit, skipped


# A table's rows are *paired*: every row is computed on the same episodes' targets with the same
# importance-sampling noise, each row seeing a nested part of one largest memory. Row-to-row
# differences then measure the memory, not which targets a row happened to draw (with independent
# episodes per row, a model that ignores its memory showed ±5 nats of row-to-row scatter on
# strokes). A model that ignores memory gives the same number in every row.


def _paired_passes(model, sampler: EpisodeSampler, episodes: int, views: Sequence[tuple[str, Callable, bool]], *,
                   samples: int, chunk: int, seed: int, exact_address: bool, progress, what: str
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """Per view, float64 [E, T_view] tensors ``ll`` (log p(x|M) bound) and — where the view asks for
    the objective's parts — ``kla``, ``klz``, over episodes 0..episodes−1 of ``sampler``.

    ``views``: (name, select, parts); ``select(batch)`` → (memory [G', M', 1, H, W], targets
    [G', T', 1, H, W]) with G'·T' = G·T_view. Every view of a pass runs under the same seed.
    """
    _check_positive(samples=samples, episodes=episodes, chunk=chunk)
    spec, device = sampler.spec, _device(model)
    per_pass, chunk = _pass_shape(spec.num_targets, spec.memory_size + spec.num_targets, samples, chunk, device)
    tag = f"paired/{spec.ways}/{spec.distractors}/{spec.shots}/{spec.targets}"
    k_obj = _objective_samples(model)
    progress = _as_progress(progress)
    out: dict[str, dict[str, list]] = {name: {"ll": []} for name, _, _ in views}
    t0 = time.perf_counter()
    with _eval_mode(model):
        for start in range(0, episodes, per_pass):
            b = sampler.batch(range(start, min(start + per_pass, episodes))).to(device)
            G = b.memory.shape[0]
            for name, select, parts in views:
                memory, targets = select(b)
                with _seeded(derive_seed(seed, tag, start), device):  # the same noise in every view: paired rows
                    ll = _log_likelihood(model, memory, targets, samples, chunk, exact_address)  # [G', T']
                    out[name]["ll"].append(ll.double().reshape(G, -1).cpu())
                    if parts:
                        obj = model.objective(Batch(memory, targets), k_obj)
                        for term, value in obj.terms.items():  # the family's objective terms, by name
                            out[name].setdefault(f"term:{term}", []).append(value.double().reshape(G, -1).cpu())
            progress.tick(what, min(start + per_pass, episodes), episodes, t0)
    return {name: {k: torch.cat(v) for k, v in acc.items() if v} for name, acc in out.items()}


def _mean_se(x: torch.Tensor) -> tuple[float, float | None]:
    """(mean, standard error) of per-episode values x [E]."""
    E = x.numel()
    return float(x.mean()), (float(x.std(unbiased=True) / math.sqrt(E)) if E > 1 else None)


def _row(model, part: dict[str, torch.Tensor], samples: int) -> dict[str, Any]:
    """The fields of :func:`nll_over_episodes` from one view's per-episode tensors."""
    nll, se = _mean_se(-part["ll"].mean(1))
    E, T = part["ll"].shape
    terms = {k[len("term:"):]: float(v.mean()) for k, v in part.items() if k.startswith("term:")}
    return {
        "nll": nll, "stderr": se,
        "kl_address": terms.pop("kl_address", None), "kl_latent": terms.pop("kl_latent", None),
        **({"terms": terms} if terms else {}),
        "episodes": E, "targets": E * T, "samples": samples,
    }


def nll_table_examples(model, dataset: Dataset | str, split: str, *, examples: Sequence[int] = DEFAULT_EXAMPLES,
                       samples: int = 1000, episodes: int = 100, seed: int = 0, chunk: int = 100,
                       binarize: str = "none", threshold: float = 0.5, exact_address: bool = False,
                       progress=None) -> list[dict[str, Any]]:
    """NLL as the number of same-class examples in memory varies (Table 1, C = 1), paired.

    ``episodes`` episodes of one class hold n_max = max(examples) examples in memory and one
    other example as the target; row n keeps the first n of them (a uniform random n-subset).
    Every row scores the same targets with the same noise, so ``change`` = NLL(n) − NLL(first n)
    and its ``change_stderr`` (over per-episode differences) say whether adding examples helps.
    An n the split cannot supply (n + 1 > its smallest class) is skipped, saying so. Rows:
    ``{"examples", "memory_size", "nll", "stderr", "change", "change_stderr", "kl_address",
    "kl_latent", "episodes", "targets", "samples"}``.
    """
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    progress = _as_progress(progress)
    fit, skipped = examples_that_fit(dataset, split, examples)
    for line in skipped:
        progress.say(line)
    if not fit:
        return []
    spec = EpisodeSpec(split=split, ways=1, shots=max(fit), targets=1, binarize=binarize, threshold=threshold)
    views = [(n, (lambda b, n=n: (b.memory[:, :n], b.targets)), True) for n in fit]
    parts = _paired_passes(model, EpisodeSampler(dataset, spec, seed), episodes, views, samples=samples, chunk=chunk,
                           seed=seed, exact_address=exact_address, progress=progress,
                           what=f"NLL vs examples, n={','.join(map(str, fit))}")
    first = -parts[fit[0]]["ll"].mean(1)  # [E]
    rows = []
    for n in fit:
        nll_ep = -parts[n]["ll"].mean(1)  # [E]
        change, change_se = _mean_se(nll_ep - first)
        rows.append({"examples": n, "memory_size": n, **_row(model, parts[n], samples),
                     "change": change, "change_stderr": change_se})
        progress.say(f"NLL vs examples: n={n:>2}: {rows[-1]['nll']:.2f} nats ({change:+.2f} vs n={fit[0]})")
    return rows


def class_counts(num_classes: int, max_classes: int | None = None) -> list[int]:
    """1, 2, 4, 8, … up to the split's class count (or ``max_classes``), and that count itself."""
    limit = num_classes if max_classes is None else min(num_classes, max_classes)
    if limit < 1:
        return []
    out = [1]
    while out[-1] * 2 <= limit:
        out.append(out[-1] * 2)
    if out[-1] != limit:
        out.append(limit)
    return out


def _classes_spec(split: str, classes: int, examples_per_class: int, **data) -> EpisodeSpec:
    ways = min(classes, CLASS_TABLE_TARGETS)
    return EpisodeSpec(split=split, ways=ways, distractors=classes - ways, shots=examples_per_class, targets=1, **data)


def classes_that_fit(dataset: Dataset, split: str, classes: Sequence[int] | None = None, examples_per_class: int = 5,
                     max_classes: int | None = None) -> tuple[list[int], list[str]]:
    """(the class counts C of the NLL-vs-classes table that the split supplies — ``classes`` or
    :func:`class_counts`, always with C = 1 — and a line per skipped C saying why). Without
    C = 1 there is no optimum: nothing fits."""
    counts = class_counts(dataset.split(split).num_classes, max_classes) if classes is None else [int(c) for c in classes]
    fit, skipped = [], []
    for C in sorted(set([1, *counts])):
        problem = _spec_problem(_classes_spec(split, C, examples_per_class), dataset)
        if problem is None and (fit or C == 1):
            fit.append(C)
        else:
            skipped.append(f"NLL vs classes: C={C} skipped: {problem or 'C = 1 (the optimum) does not fit'}")
    return fit, skipped


def nll_table_classes(model, dataset: Dataset | str, split: str, *, classes: Sequence[int] | None = None,
                      examples_per_class: int = 5, max_classes: int | None = None, samples: int = 1000,
                      episodes: int = 100, seed: int = 0, chunk: int = 100, binarize: str = "none",
                      threshold: float = 0.5, exact_address: bool = False, progress=None) -> list[dict[str, Any]]:
    """NLL as the number of classes in memory varies, beside the optimum of a perfect model; paired.

    ``episodes`` episodes hold C_max classes × ``examples_per_class`` examples in memory, and one
    target from each of the first T = min(C_max, CLASS_TABLE_TARGETS) classes. Row C keeps the
    first C classes' examples and the targets of the first min(C, T) of them, so a row's cost does
    not grow with C. ``optimum`` is a perfect model of C disjoint classes scored on the row's own
    targets: −log p(x | its class's examples alone) + log C, averaged; ``gap`` = NLL − optimum with
    ``gap_stderr`` over per-episode differences. ``classes`` defaults to :func:`class_counts`;
    C = 1 is always computed. Counts the split cannot supply are skipped, saying so.
    """
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    _check_positive(examples_per_class=examples_per_class)
    progress = _as_progress(progress)
    fit, skipped = classes_that_fit(dataset, split, classes, examples_per_class, max_classes)
    for line in skipped:
        progress.say(line)
    if not fit:
        return []
    s = examples_per_class
    spec = _classes_spec(split, max(fit), s, binarize=binarize, threshold=threshold)
    T = spec.ways  # targets per episode, one per class 0..T−1; memory is class-major

    def own(b: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        G = b.memory.shape[0]
        memory = b.memory[:, : T * s].reshape(G * T, s, *b.memory.shape[2:])  # [G·T, s, 1, H, W]
        return memory, b.targets.reshape(G * T, 1, *b.targets.shape[2:])  # [G·T, 1, 1, H, W]

    views = [("own", own, False)]
    views += [(C, (lambda b, C=C: (b.memory[:, : C * s], b.targets[:, : min(C, T)])), True) for C in fit]
    parts = _paired_passes(model, EpisodeSampler(dataset, spec, seed), episodes, views, samples=samples, chunk=chunk,
                           seed=seed, exact_address=exact_address, progress=progress,
                           what=f"NLL vs classes, C={','.join(map(str, fit))}")
    own_nll = -parts["own"]["ll"]  # [E, T]: each target with its own class's examples alone
    rows = []
    for C in fit:
        nll_ep = -parts[C]["ll"].mean(1)  # [E]
        opt_ep = own_nll[:, : min(C, T)].mean(1) + math.log(C)  # [E]
        gap, gap_se = _mean_se(nll_ep - opt_ep)
        rows.append({"classes": C, "examples_per_class": s, "memory_size": C * s, **_row(model, parts[C], samples),
                     "optimum": float(opt_ep.mean()), "gap": gap, "gap_stderr": gap_se})
        progress.say(f"NLL vs classes: C={C:>3}: {rows[-1]['nll']:.2f} nats (optimum {rows[-1]['optimum']:.2f})")
    return rows


# =============================================================================================
# classification
# =============================================================================================


def class_log_scores(model, memory: torch.Tensor, memory_labels: torch.Tensor, targets: torch.Tensor, method: str, *,
                     samples: int = 10, chunk: int = 100, exact_address: bool = False) -> torch.Tensor:
    """log p(c|x) up to a constant per target, for the C = max label + 1 classes of memory: [G, T, C].

    memory [G, M, 1, H, W], memory_labels int [G, M], targets [G, T, 1, H, W].
    ``q_a``: log Σ_{a: label(a)=c} q(a|x).  ``likelihood``: log p(x | M_c), M_c = class c's
    entries only (the classes must have equally many entries).
    """
    G, M = memory_labels.shape
    C = int(memory_labels.max()) + 1
    onehot = torch.nn.functional.one_hot(memory_labels, C).bool()  # [G, M, C]
    if method == "q_a":  # the family's own classifier: for address models log Σ_{a: label(a)=c} q(a|x)
        return model.class_scores(Batch(memory, targets, memory_labels)).double()  # [G, T, C]
    if method == "likelihood":
        counts = onehot.sum(1)  # [G, C]
        if not bool((counts == counts[:, :1]).all()) or int(counts[0, 0]) * C != M:
            raise ValueError(f"likelihood classification needs equally many memory entries per class, got counts {counts[0].tolist()}")
        S, T = M // C, targets.shape[1]
        order = torch.argsort(memory_labels, dim=1, stable=True)  # [G, M]: class-major
        support = torch.gather(memory, 1, order.view(G, M, 1, 1, 1).expand_as(memory))  # [G, M, 1, H, W]
        support = support.reshape(G * C, S, *memory.shape[2:])  # [G·C, S, 1, H, W]
        tgt = targets.unsqueeze(1).expand(G, C, *targets.shape[1:]).reshape(G * C, *targets.shape[1:])  # [G·C, T, 1, H, W]
        ll = _log_likelihood(model, support, tgt, samples, chunk, exact_address)  # [G·C, T]
        return ll.double().view(G, C, T).transpose(1, 2)  # [G, T, C]
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def _classify(model, episode_batch, method: str, *, samples: int, chunk: int, exact_address: bool,
              ties: torch.Generator) -> np.ndarray:
    """Correct or not per target, bool [G, T], for one batch of episodes on the model's device."""
    b = episode_batch.to(_device(model))
    scores = class_log_scores(model, b.memory, b.memory_labels, b.targets, method, samples=samples, chunk=chunk,
                              exact_address=exact_address)  # [G, T, C]
    return (argmax_random_ties(scores, ties) == b.target_labels.cpu()).numpy()


def _require_method(model, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    why = methods_for(model)[method]
    if why is not None:
        raise ValueError(f"classification by {method!r}: {why}")


def classification_accuracy(model, dataset: Dataset | str, spec: EpisodeSpec, episodes: int = 1000, method: str = "q_a", *,
                            samples: int = 10, chunk: int = 100, seed: int = 0, exact_address: bool = False,
                            progress=None) -> dict[str, Any]:
    """N-way K-shot accuracy of ``model`` on episodes 0..episodes−1 of ``spec`` (no fine-tuning).

    ``method``: ``"q_a"`` (Σ of q(a|x) over each class's entries) or ``"likelihood"`` (p(x|M_c),
    ``samples`` importance samples per class and target). Returns :func:`accuracy_summary`'s
    fields plus ``method``, ``ways``, ``shots`` (and ``samples`` for the likelihood).
    """
    _check_positive(episodes=episodes, samples=samples, chunk=chunk)
    _require_method(model, method)
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    sampler = EpisodeSampler(dataset, spec, seed)
    C, M, T = spec.memory_classes, spec.memory_size, spec.num_targets
    if method == "q_a":
        per_pass, chunk = max(1, IMAGES_PER_PASS // (M + T)), chunk
    else:  # G·C rows of S memory entries and T targets each
        per_pass, chunk = _pass_shape(C * T, M + C * T, samples, chunk, _device(model))
    progress = _as_progress(progress)
    name = f"{spec.ways}-way {spec.shots}-shot, {method}"
    tag = f"cls/{method}/{spec.ways}/{spec.shots}/{spec.targets}/{spec.distractors}"
    correct: list[np.ndarray] = []
    t0 = time.perf_counter()
    ties = torch.Generator().manual_seed(derive_seed(seed, tag, "ties"))
    with _eval_mode(model), _seeded(derive_seed(seed, tag), _device(model)):
        for start in range(0, episodes, per_pass):
            batch = sampler.batch(range(start, min(start + per_pass, episodes)))
            correct.extend(_classify(model, batch, method, samples=samples, chunk=chunk, exact_address=exact_address,
                                     ties=ties))
            progress.tick(name, min(start + per_pass, episodes), episodes, t0)
    out = {"method": method, "ways": spec.ways, "shots": spec.shots, **accuracy_summary(correct)}
    if method == "likelihood":
        out["samples"] = samples
    return out


def task_name(ways: int, shots: int) -> str:
    return f"{ways}way{shots}shot"


def lake_runs_accuracy(model, dataset_dir: Dataset | str | Path, *, methods: Sequence[str] | None = None, samples: int = 10,
                       chunk: int = 100, seed: int = 0, binarize: str = "none", threshold: float = 0.5,
                       exact_address: bool = False, progress=None) -> dict[str, Any]:
    """Accuracy on Lake et al.'s fixed 20-way 1-shot runs (a ``varmem data build --source lake-runs`` directory).

    ``methods``: default every method the model supports. Intervals as in :func:`accuracy_summary`,
    with the runs as episodes. ``binarize``: "none" or "static" (the runs are fixed images).
    """
    runs = LakeRunEpisodes(dataset_dir, binarize=binarize, threshold=threshold)
    model_shape = getattr(model, "image_shape", None)
    data_shape = tuple(runs.dataset.image_shape)
    if model_shape is not None and tuple(model_shape) != data_shape:
        h, w = data_shape
        raise DataError(f"{runs.dataset.directory} holds {h}×{w} images but the model takes {tuple(model_shape)}: "
                         f"rebuild the runs with varmem data build --source lake-runs --size {model_shape[0]}")
    supported = methods_for(model)
    if methods is None:
        methods = [m for m in METHODS if supported[m] is None]
    for m in methods:
        _require_method(model, m)
    episodes = list(runs)
    progress = _as_progress(progress)
    out: dict[str, Any] = {"dir": str(runs.dataset.directory), "runs": len(episodes),
                           "ways": sorted({int(e.memory_labels.max()) + 1 for e in episodes})}
    for m in methods:
        t0 = time.perf_counter()
        correct = []
        ties = torch.Generator().manual_seed(derive_seed(seed, f"lake/{m}", "ties"))
        with _eval_mode(model), _seeded(derive_seed(seed, f"lake/{m}"), _device(model)):
            for i, ep in enumerate(episodes):
                correct.extend(_classify(model, EpisodeBatch.stack([ep]), m, samples=samples, chunk=chunk,
                                         exact_address=exact_address, ties=ties))
                progress.tick(f"Lake runs, {m}", i + 1, len(episodes), t0)
            out[m] = {"method": m, **accuracy_summary(correct), **({"samples": samples} if m == "likelihood" else {})}
    return out


# =============================================================================================
# pictures
# =============================================================================================

CAPTION = 13  # px: the caption band above each row of the address picture
PAD = 2  # episodes.show.tile's default padding


def _uint8(images: torch.Tensor) -> np.ndarray:
    """float [n, 1, H, W] in [0, 1] → uint8 [n, H, W] (ink high)."""
    return (images[:, 0].detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def _shade_column(picture: np.ndarray, column: int, cell: int) -> None:
    x0 = PAD + column * (cell + PAD)
    picture[:, x0 : x0 + cell] = SEP


def sample_grid(model, dataset: Dataset | str, split: str, *, rows: int = 8, samples: int = 10, seed: int = 0,
                binarize: str = "none", threshold: float = 0.5) -> np.ndarray:
    """One-shot generation: a row per class, the exemplar in memory on the left, a shaded gap,
    then ``samples`` Bernoulli means from p(x | M = {exemplar}). uint8 picture (ink dark).

    Size: cell = upscaled image side; width = (samples + 2)·(cell + 2) + 2,
    height = 16 (title) + rows·(cell + 2) + 2.
    """
    _check_positive(rows=rows, samples=samples)
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    rows = min(rows, dataset.split(split).num_classes)
    spec = EpisodeSpec(split=split, ways=rows, shots=1, targets=1, targets_from_memory=True, binarize=binarize,
                       threshold=threshold)
    ep = EpisodeSampler(dataset, spec, seed).episode(0)
    device = _device(model)
    memory = ep.memory.unsqueeze(1).to(device)  # [R, 1, 1, H, W]: each class its own one-shot memory
    with _eval_mode(model), _seeded(derive_seed(seed, "samples"), device):
        x = model.sample(memory, samples)  # [R, S, 1, H, W]
    h, w = ep.memory.shape[-2:]
    cells = np.zeros((rows, samples + 2, h, w), dtype=np.uint8)
    cells[:, 0] = _uint8(ep.memory)
    cells[:, 2:] = _uint8(x.reshape(rows * samples, 1, h, w)).reshape(rows, samples, h, w)
    big = upscale(cells)
    pic = tile(big)
    _shade_column(pic, 1, big.shape[-1])
    what = "p(x|M)" if _reads_episode_memory(model) else "p(x) (the model ignores memory)"
    return labelled(pic, f"one-shot samples: exemplar | {samples} samples from {what}")


def address_picture(model, dataset: Dataset | str, split: str, *, targets: int = 6, ways: int = 10, shots: int = 2,
                    top: int = 5, seed: int = 0, binarize: str = "none", threshold: float = 0.5) -> np.ndarray:
    """q(a|x) for a few targets of one episode (``ways`` classes × ``shots`` entries in memory):
    a row per target — the target, a shaded gap, its ``top`` most probable memory entries with
    q(a|x) written above each (``*``: an entry of the target's class).

    Size: width = (top + 2)·(cell + 2) + 2, height = 16 + rows·(CAPTION + cell + 4).
    """
    _check_positive(targets=targets, ways=ways, shots=shots, top=top)
    if methods_for(model)["q_a"] is not None:
        raise ValueError(f"address_picture: {methods_for(model)['q_a']}")
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    s = dataset.split(split)
    ways = min(ways, s.num_classes)
    shots = max(1, min(shots, int(s.class_count.min()) - 1))
    spec = EpisodeSpec(split=split, ways=ways, shots=shots, targets=1, binarize=binarize, threshold=threshold)
    ep = EpisodeSampler(dataset, spec, seed).episode(0)
    device = _device(model)
    with _eval_mode(model):
        log_q = model.address_log_posterior(Batch(ep.memory[None].to(device), ep.targets[None].to(device)))[0].cpu()  # [T, M]
    rows, top = min(targets, log_q.shape[0]), min(top, log_q.shape[1])
    mem, tgt = _uint8(ep.memory), _uint8(ep.targets)
    h, w = mem.shape[1:]
    parts = []
    for t in range(rows):
        q, idx = log_q[t].exp().topk(top)  # [top]
        cells = np.zeros((1, top + 2, h, w), dtype=np.uint8)
        cells[0, 0], cells[0, 2:] = tgt[t], mem[idx.numpy()]
        big = upscale(cells)
        cell = big.shape[-1]
        strip = tile(big)
        _shade_column(strip, 1, cell)
        img = Image.new("L", (strip.shape[1], strip.shape[0] + CAPTION), color=BG)
        img.paste(Image.fromarray(strip), (0, CAPTION))
        draw = ImageDraw.Draw(img)
        draw.text((PAD + 1, 0), "target", fill=0)
        for j in range(top):
            same = int(ep.memory_labels[idx[j]]) == int(ep.target_labels[t])
            draw.text((PAD + (j + 2) * (cell + PAD) + 1, 0), f"{float(q[j]):.3f}" + ("*" if same else ""), fill=0)
        parts.append(np.asarray(img))
    pic = np.concatenate(parts, axis=0)
    return labelled(pic, f"q(a|x): top {top} of {log_q.shape[1]} entries (* = same class)")


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(1, ticks)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(f * mag for f in (1, 2, 2.5, 5, 10) if f * mag >= raw)


def line_plot(x_labels: Sequence[str], series: Sequence[dict[str, Any]], *, title: str, x_label: str, y_label: str,
              size: tuple[int, int] = (560, 360)) -> np.ndarray:
    """A greyscale line plot drawn with Pillow: categorical x (evenly spaced, labelled), y with error bars.

    ``series``: dicts with ``label``, ``y`` (floats; None/NaN skipped), optional ``err`` (half-widths)
    and ``dashed``. Returns uint8 [height, width] = ``size[::-1]``.
    """
    W, H = size
    img = Image.new("L", size, color=BG)
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, 16, 48, 48
    x0, x1, y0, y1 = left, W - right, top, H - bottom  # plot box
    values = []
    for s in series:
        for i, y in enumerate(s["y"]):
            if y is None or not math.isfinite(y):
                continue
            e = (s.get("err") or [None] * len(s["y"]))[i] or 0.0
            values += [y - e, y + e]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    margin = 0.08 * (hi - lo)
    lo, hi = lo - margin, hi + margin
    n = len(x_labels)

    def px(i: int) -> float:
        return x0 + (x1 - x0) * ((i + 0.5) / n if n else 0.5)

    def py(v: float) -> float:
        return y1 - (y1 - y0) * (v - lo) / (hi - lo)

    step = _nice_step(hi - lo)
    v = math.ceil(lo / step) * step
    while v <= hi:
        yy = py(v)
        d.line([(x0, yy), (x1, yy)], fill=225)
        d.line([(x0 - 4, yy), (x0, yy)], fill=0)
        label = f"{v:g}"
        d.text((x0 - 6 - d.textlength(label), yy - 6), label, fill=0)
        v += step
    for i, lab in enumerate(x_labels):
        xx = px(i)
        d.line([(xx, y1), (xx, y1 + 4)], fill=0)
        d.text((xx - d.textlength(lab) / 2, y1 + 6), lab, fill=0)
    d.rectangle([x0, y0, x1, y1], outline=0)
    d.text(((x0 + x1) / 2 - d.textlength(x_label) / 2, y1 + 24), x_label, fill=0)
    d.text((6, 24), y_label, fill=0)
    d.text((W / 2 - d.textlength(title) / 2, 6), title, fill=0)
    for k, s in enumerate(series):
        ink = 0 if not s.get("dashed") else 110
        pts = [(px(i), py(y)) for i, y in enumerate(s["y"]) if y is not None and math.isfinite(y)]
        for (ax, ay), (bx, by) in zip(pts, pts[1:]):
            if s.get("dashed"):
                for t in np.arange(0.0, 1.0, 0.2):
                    d.line([(ax + (bx - ax) * t, ay + (by - ay) * t), (ax + (bx - ax) * (t + 0.1), ay + (by - ay) * (t + 0.1))],
                           fill=ink, width=2)
            else:
                d.line([(ax, ay), (bx, by)], fill=ink, width=2)
        errs = s.get("err") or [None] * len(s["y"])
        for i, y in enumerate(s["y"]):
            if y is None or not math.isfinite(y):
                continue
            xx, yy = px(i), py(y)
            e = errs[i]
            if e:
                d.line([(xx, py(y - e)), (xx, py(y + e))], fill=ink)
                d.line([(xx - 3, py(y - e)), (xx + 3, py(y - e))], fill=ink)
                d.line([(xx - 3, py(y + e)), (xx + 3, py(y + e))], fill=ink)
            _marker(d, xx, yy, s.get("marker", "circle"), ink, hollow=bool(s.get("dashed")))
    # legend: one row between the title and the plot box, right-aligned
    lx = x1
    for s in reversed(series):
        ink = 0 if not s.get("dashed") else 110
        lx -= d.textlength(s["label"]) + 30
        d.line([(lx, 30), (lx + 20, 30)], fill=ink, width=2)
        _marker(d, lx + 10, 30, s.get("marker", "circle"), ink, hollow=bool(s.get("dashed")))
        d.text((lx + 24, 24), s["label"], fill=0)
        lx -= 12
    return np.asarray(img)


MARKERS = ("circle", "square", "triangle", "diamond")


def _marker(d: ImageDraw.ImageDraw, x: float, y: float, kind: str, ink: int, hollow: bool = False, r: float = 3.5) -> None:
    """One point marker of a greyscale plot: series tell apart by shape."""
    fill = BG if hollow else ink
    if kind == "square":
        d.rectangle([x - r, y - r, x + r, y + r], fill=fill, outline=ink)
    elif kind == "triangle":
        d.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=fill, outline=ink)
    elif kind == "diamond":
        d.polygon([(x, y - r - 1), (x - r - 1, y), (x, y + r + 1), (x + r + 1, y)], fill=fill, outline=ink)
    else:
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=ink)


def nll_examples_plot(rows: Sequence[dict[str, Any]], size: tuple[int, int] = (560, 360)) -> np.ndarray:
    """The NLL-vs-examples table as a line plot (± standard error)."""
    return line_plot([str(r["examples"]) for r in rows],
                     [{"label": "NLL bound ± s.e.", "y": [r["nll"] for r in rows], "err": [r["stderr"] for r in rows]}],
                     title="NLL vs examples of one class in memory", x_label="examples in memory",
                     y_label="NLL (nats)", size=size)


def nll_classes_plot(rows: Sequence[dict[str, Any]], size: tuple[int, int] = (560, 360)) -> np.ndarray:
    """The NLL-vs-classes table as a line plot, with the optimum dashed."""
    return line_plot([str(r["classes"]) for r in rows],
                     [{"label": "NLL bound ± s.e.", "y": [r["nll"] for r in rows], "err": [r["stderr"] for r in rows]},
                      {"label": "optimum (own class + log C)", "y": [r["optimum"] for r in rows], "dashed": True}],
                     title=f"NLL vs classes in memory ({rows[0]['examples_per_class']} examples each)" if rows else "NLL vs classes",
                     x_label="classes in memory", y_label="NLL (nats)", size=size)


def nll_comparison_plot(results: Sequence[tuple[str, dict[str, Any]]], table: str = "examples",
                        size: tuple[int, int] = (640, 400)) -> np.ndarray:
    """Several models' NLL tables in one plot: ``results`` = (label, evaluation result) pairs,
    ``table`` "examples" or "classes"; x is the union of the rows' n (or C), a model without a row
    at some x has a gap there."""
    if table not in ("examples", "classes"):
        raise ValueError(f"table must be 'examples' or 'classes', got {table!r}")
    key = "examples" if table == "examples" else "classes"
    tables = [(label, {r[key]: r for r in (res.get(f"nll_vs_{table}") or [])}) for label, res in results]
    xs = sorted({x for _, rows in tables for x in rows})
    series = []
    for k, (label, rows) in enumerate(tables):
        series.append({"label": label, "marker": MARKERS[k % len(MARKERS)],
                       "y": [rows[x]["nll"] if x in rows else None for x in xs],
                       "err": [rows[x]["stderr"] if x in rows else None for x in xs]})
    title = ("NLL bound vs examples of one class in memory (± s.e.)" if table == "examples"
             else "NLL bound vs classes in memory (± s.e.)")
    return line_plot([str(x) for x in xs], series, title=title,
                     x_label="examples in memory" if table == "examples" else "classes in memory",
                     y_label="NLL (nats)", size=size)


# =============================================================================================
# the protocol
# =============================================================================================


def evaluate(run, *, samples: int = 1000, episodes: int = 100, seed: int | None = None, out_dir: str | Path | None = None,
             tables: bool | Sequence[str] = True, classification: bool = True, lake_runs: str | Path | None = None, pictures: bool = True,
             progress: Callable[[str], None] | None = print, classification_episodes: int = 1000,
             likelihood_samples: int = 10, likelihood_episodes: int | None = None,
             examples: Sequence[int] = DEFAULT_EXAMPLES, examples_per_class: int = 5,
             max_classes: int | None = None, tasks: Sequence[tuple[int, int]] = DEFAULT_TASKS, alphabet: str = "any",
             chunk: int | None = None, exact_address: bool = False) -> dict[str, Any]:
    """The evaluation protocol of a :class:`varmem.distributed.train_loop.LoadedRun`, on its eval split.

    ``samples``: K of the NLL tables' bound; ``episodes``: episodes per table; ``tables``: True
    (both), False, or some of :data:`TABLES`; ``classification``: False skips the tasks;
    ``classification_episodes`` per N-way K-shot task (``tasks``: (ways, shots) pairs, one query
    per class, classes drawn from ``alphabet`` "any" or "within" one alphabet);
    ``likelihood_samples``: K of each p(x|M_c) of likelihood classification, over
    ``likelihood_episodes`` per task (default ``classification_episodes``; it costs ways × targets
    × K decodes per episode where q(a|x) costs one encoder pass); ``lake_runs``: a
    lake-runs dataset directory (optional); ``out_dir``: where pictures go (default
    RUN_DIR/evaluation); ``seed``: default the run's ``train.val_seed``; ``chunk``: samples per
    pass, default the run's ``train.chunk``. Returns a JSON-serializable dict; what could not be
    measured (rows the split cannot supply, methods the model lacks) is listed under "skipped".
    """
    likelihood_episodes = classification_episodes if likelihood_episodes is None else likelihood_episodes
    _check_positive(samples=samples, episodes=episodes, classification_episodes=classification_episodes,
                    likelihood_samples=likelihood_samples, likelihood_episodes=likelihood_episodes)
    config, model, dataset = run.config, run.model, run.dataset
    seed = config.train.val_seed if seed is None else int(seed)
    chunk = config.train.chunk if chunk is None else chunk
    split, binarize, threshold = config.data.eval_split, config.data.binarize, config.data.threshold
    say = _Progress(progress)
    data = dict(binarize=binarize, threshold=threshold)
    result: dict[str, Any] = {
        "split": split, "seed": seed, "samples": samples, "episodes": episodes,
        "examples_per_class": examples_per_class, "classification_episodes": classification_episodes,
        "likelihood_samples": likelihood_samples, "likelihood_episodes": likelihood_episodes, "paired_tables": True,
        "skipped": [],
    }
    skipped: list[str] = result["skipped"]
    t_start = time.perf_counter()
    say.say(f"evaluation protocol: {type(model).__name__} on {Path(dataset.directory).name}/{split}, seed {seed}")

    tables = set(TABLES if tables is True else () if tables is False else tables)
    if tables - set(TABLES):
        raise DataError(f"evaluation: tables must be among {', '.join(TABLES)}, got {', '.join(sorted(tables))}")
    if "examples" in tables:
        _, why = examples_that_fit(dataset, split, examples)
        skipped.extend(why)
        result["nll_vs_examples"] = nll_table_examples(
            model, dataset, split, examples=examples, samples=samples, episodes=episodes, seed=seed, chunk=chunk,
            exact_address=exact_address, progress=say, **data)
    if "classes" in tables:
        skipped.extend(classes_that_fit(dataset, split, None, examples_per_class, max_classes)[1])
        result["nll_vs_classes"] = nll_table_classes(
            model, dataset, split, examples_per_class=examples_per_class, max_classes=max_classes, samples=samples,
            episodes=episodes, seed=seed, chunk=chunk, exact_address=exact_address, progress=say, **data)

    if classification:
        supported = methods_for(model)
        for m, why in supported.items():
            if why is not None:
                skipped.append(f"classification by {m}: {why}")
        methods = [m for m in METHODS if supported[m] is None]
        result["classification"] = {}
        for ways, shots in tasks if methods else ():
            spec = EpisodeSpec.classification(split, ways=ways, shots=shots, queries=1, alphabet=alphabet, **data)
            problem = _spec_problem(spec, dataset)
            if problem is not None:
                skipped.append(f"classification {ways}-way {shots}-shot skipped: {problem}")
                say.say(skipped[-1])
                continue
            entry = {}
            for m in methods:
                n_episodes = likelihood_episodes if m == "likelihood" else classification_episodes
                r = classification_accuracy(model, dataset, spec, n_episodes, m, samples=likelihood_samples,
                                            chunk=chunk, seed=seed, exact_address=exact_address, progress=say)
                entry[m] = r
                say.say(f"{ways}-way {shots}-shot, {m}: {100 * r['accuracy']:.2f} ± {100 * (r['ci95'] or 0):.2f} %")
            result["classification"][task_name(ways, shots)] = entry

    if lake_runs is not None:
        lake_binarize = "static" if binarize == "dynamic" else binarize  # fixed images: no Bernoulli draws
        result["lake_runs"] = lake_runs_accuracy(model, lake_runs, samples=likelihood_samples, chunk=chunk, seed=seed,
                                                 binarize=lake_binarize, threshold=threshold,
                                                 exact_address=exact_address, progress=say)
        for m in METHODS:
            if m in result["lake_runs"]:
                r = result["lake_runs"][m]
                say.say(f"Lake runs, {m}: {100 * r['accuracy']:.2f} ± {100 * (r['ci95'] or 0):.2f} %")

    result["pictures"] = []
    if pictures:
        folder = Path(out_dir) if out_dir is not None else Path(run.run_dir) / "evaluation"
        drawn = [("samples_one_shot.png", lambda: sample_grid(model, dataset, split, seed=seed, **data))]
        if methods_for(model)["q_a"] is None:
            drawn.append(("address_top5.png", lambda: address_picture(model, dataset, split, seed=seed, **data)))
        else:
            skipped.append(f"address picture: {methods_for(model)['q_a']}")
        if result.get("nll_vs_examples"):
            drawn.append(("nll_vs_examples.png", lambda: nll_examples_plot(result["nll_vs_examples"])))
        if result.get("nll_vs_classes"):
            drawn.append(("nll_vs_classes.png", lambda: nll_classes_plot(result["nll_vs_classes"])))
        for name, draw in drawn:
            result["pictures"].append(str(save_png(draw(), folder / name)))
        say.say(f"pictures: {', '.join(result['pictures'])}")
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


# =============================================================================================
# the console
# =============================================================================================


def _f(v: float | None, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(round(v, int(spec.split(".")[1][:-1])) + 0.0, spec)  # + 0.0: no "-0.000" for a rounded-away negative


def _acc(r: dict[str, Any] | None) -> str:
    if not r:
        return "—"
    return f"{100 * r['accuracy']:6.2f} ± {_f(None if r['ci95'] is None else 100 * r['ci95'])} %"


def format_tables(result: dict[str, Any]) -> str:
    """The protocol's results as console tables."""
    out: list[str] = []
    K, E = result.get("samples"), result.get("episodes")
    rows = result.get("nll_vs_examples")
    if rows is not None:
        out.append(f"NLL bound vs examples of one class in memory (K={K}, the same {E} episodes' targets in every row, "
                   f"split {result.get('split')})")
        first = rows[0]["examples"] if rows else 1
        out.append(f"  {'examples':>8}  {'NLL':>9}  {'± s.e.':>7}  {f'vs n={first}':>8}  {'± s.e.':>7}  {'KL(a)':>7}  {'KL(z)':>7}")
        for r in rows:
            out.append(f"  {r['examples']:>8}  {_f(r['nll']):>9}  {_f(r['stderr']):>7}  {_f(r.get('change'), '+.2f'):>8}  "
                       f"{_f(r.get('change_stderr')):>7}  {_f(r['kl_address'], '.3f'):>7}  {_f(r['kl_latent']):>7}")
    rows = result.get("nll_vs_classes")
    if rows is not None:
        out.append(f"NLL bound vs classes in memory ({result.get('examples_per_class')} examples per class, K={K})")
        out.append(f"  {'classes':>7}  {'|M|':>6}  {'NLL':>9}  {'± s.e.':>7}  {'optimum':>9}  {'gap':>7}  {'± s.e.':>7}  {'KL(a)':>7}")
        for r in rows:
            out.append(f"  {r['classes']:>7}  {r['memory_size']:>6}  {_f(r['nll']):>9}  {_f(r['stderr']):>7}  "
                       f"{_f(r['optimum']):>9}  {_f(r['nll'] - r['optimum'], '+.2f'):>7}  {_f(r.get('gap_stderr')):>7}  "
                       f"{_f(r['kl_address'], '.3f'):>7}")
        out.append("  optimum: a perfect model of C disjoint classes on the row's targets: "
                   "−log p(x | its own class's examples) + log C")
    cls = result.get("classification")
    if cls is not None:
        n_q, n_l = result.get("classification_episodes"), result.get("likelihood_episodes")
        episodes = f"{n_q} episodes" if n_l in (None, n_q) else f"{n_q} episodes by q(a|x), {n_l} by likelihood"
        out.append(f"Few-shot classification ({episodes}, one query per class, accuracy ± 95% CI)")
        out.append(f"  {'task':<14}  {'q(a|x)':>18}  {'likelihood (K=' + str(result.get('likelihood_samples')) + ')':>20}")
        for name, entry in cls.items():
            ways, shots = name.replace("shot", "").split("way")
            out.append(f"  {ways + '-way ' + shots + '-shot':<14}  {_acc(entry.get('q_a')):>18}  {_acc(entry.get('likelihood')):>20}")
    lake = result.get("lake_runs")
    if lake is not None:
        out.append(f"Lake's one-shot runs ({lake['runs']} runs, {'/'.join(map(str, lake['ways']))}-way 1-shot, {lake['dir']})")
        for m, label in (("q_a", "q(a|x)"), ("likelihood", "likelihood")):
            if m in lake:
                out.append(f"  {label:<12} {_acc(lake[m])}   error {100 * (1 - lake[m]['accuracy']):.1f}%")
    for line in result.get("skipped") or []:
        out.append(f"  note: {line}")
    if result.get("pictures"):
        out.append("Pictures:")
        out.extend(f"  {p}" for p in result["pictures"])
    return "\n".join(out)


def format_comparison(results: Sequence[tuple[str, dict[str, Any]]], markdown: bool = False) -> str:
    """Several models' protocol results side by side: NLL vs examples, NLL vs classes (with each
    model's own optimum) and classification accuracy, one column per model; as console tables or
    (``markdown``) as Markdown tables under bold titles."""
    labels = [label for label, _ in results]
    blocks: list[tuple[str, str, list[list[str]]]] = []  # (title, first column, rows of cells)
    for table, key, title in (("examples", "examples", "NLL bound vs examples of one class in memory (nats ± s.e.)"),
                              ("classes", "classes", "NLL bound vs classes in memory (nats ± s.e. [optimum])")):
        by = [{r[key]: r for r in (res.get(f"nll_vs_{table}") or [])} for _, res in results]
        xs = sorted({x for rows in by for x in rows})
        rows = []
        for x in xs:
            row = [str(x)]
            for found in by:
                r = found.get(x)
                text = "—" if r is None else f"{_f(r['nll'])} ± {_f(r['stderr'], '.1f')}"
                if r is not None and table == "classes":
                    text += f" [{_f(r['optimum'], '.1f')}]"
                row.append(text)
            rows.append(row)
        if rows:
            blocks.append((title, key, rows))
    tasks = list(dict.fromkeys(t for _, res in results for t in (res.get("classification") or {})))
    rows = []
    for t in tasks:
        row = [t]
        for _, res in results:
            entry = (res.get("classification") or {}).get(t) or {}
            row.append(" / ".join(f"{100 * entry[m]['accuracy']:.1f} ± {100 * (entry[m]['ci95'] or 0):.1f}"
                                  if m in entry else "—" for m in METHODS))
        rows.append(row)
    if rows:
        blocks.append(("Few-shot classification accuracy (% ± 95% CI: by q(a|x) / by likelihood)", "task", rows))
    out: list[str] = []
    for title, key, rows in blocks:
        if markdown:
            out += ["", f"**{title}**", "", "| " + " | ".join([key, *labels]) + " |", "|" + "---|" * (len(labels) + 1)]
            out += ["| " + " | ".join(row) + " |" for row in rows]
            continue
        widths = [max(len(c) for c in col) for col in zip([key, *labels], *rows)]
        out.append(title)
        for row in [[key, *labels], *rows]:
            out.append("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))
    return "\n".join(out).strip("\n")


__all__ = [
    "DEFAULT_EXAMPLES", "DEFAULT_TASKS", "METHODS", "evaluate", "format_tables", "nll_table_examples",
    "nll_table_classes", "nll_over_episodes", "classification_accuracy", "lake_runs_accuracy", "class_log_scores",
    "accuracy_summary", "wilson_interval", "class_counts", "sample_grid", "address_picture",
    "line_plot", "nll_examples_plot", "nll_classes_plot", "nll_comparison_plot", "format_comparison", "methods_for", "derive_seed",
]
