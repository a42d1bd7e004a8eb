"""The NLL tables of the evaluation protocol (Bornschein et al. 2017, §4), paired.

* **NLL vs examples** (the paper's Table 1, C = 1): memory = n examples of ONE class, the target
  another example of that class, n in 1, 2, 3, 4, 5, 10, 19; −log p(x|M) bounded with K importance
  samples (``log_likelihood``). A row is skipped, with the reason, when the split's classes do not
  hold n + 1 images.
* **NLL vs classes**: memory = C classes × ``examples_per_class`` examples, C = 1, 2, 4, 8, … up to
  what the split holds; targets from those classes. Beside each row, the optimum of a perfect
  model of C disjoint classes: p(x|M) = (1/C) p(x|M_c), so ``optimum(C) = NLL(own class) + log C``
  with the model's own estimate of NLL(own class). A row below its optimum is flagged
  (``beats_optimum``), see :data:`OPTIMUM_NOTE`.

A table's rows are *paired*: every row is computed on the same episodes' targets with the same
importance-sampling noise, each row seeing a nested part of one largest memory. Row-to-row
differences then measure the memory, not which targets a row happened to draw (with independent
episodes per row, a model that ignores its memory showed ±5 nats of row-to-row scatter on
strokes). A model that ignores memory gives the same number in every row.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeBatch, EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.models.base import Batch
from varmem.models.eval.passes import (check_positive, derive_seed, device_of, eval_mode, log_likelihood, open_dataset,
                                       pass_shape, seeded, spec_problem)
from varmem.models.eval.progress import as_progress
from varmem.models.eval.stats import mean_se

# The paper's Table 1 columns: examples of one class in memory.
DEFAULT_EXAMPLES = (1, 2, 3, 4, 5, 10, 19)
TABLES = ("examples", "classes", "conditioning")  # NLL vs examples of one class, vs classes in memory, and the
# talk's table, NLL vs conditioning examples for C_test classes (varmem.models.eval.conditioning)
# Targets per episode in the NLL-vs-classes table: targets come from min(C, this) of the C
# memory classes (the rest are memory-only classes), so a row's cost does not grow with C.
CLASS_TABLE_TARGETS = 8
# K of the objective whose terms (KL parts) the tables report beside each row: their expectations do
# not depend on K (KL(a) is exact; KL(z) is averaged over the sampled addresses), only their noise.
OBJECTIVE_SAMPLES = 4

OPTIMUM_NOTE = ("the optimum uses the model's own K-sample estimate of −log p(x | its class's examples alone), a "
                "Monte-Carlo bound that is noisy and biased high and drawn with other noise than the row; a row can beat "
                "it by that noise (within about 2 s.e.) or because the per-class estimate is looser than the row's, not "
                "because the model beats a perfect one")


def objective_samples(model) -> int:
    return max(OBJECTIVE_SAMPLES, model.min_num_samples)


def paired_passes(model, sampler: EpisodeSampler, episodes: int, views: Sequence[tuple[Any, Callable, bool]], *,
                  samples: int, chunk: int, seed: int, exact_address: bool, progress=None
                  ) -> dict[Any, dict[str, torch.Tensor]]:
    """Per view, float64 [E, T_view] tensors ``ll`` (log p(x|M) bound) and — where the view asks for
    the objective's parts — ``term:<name>``, over episodes 0..episodes−1 of ``sampler``.

    ``views``: (name, select, parts); ``select(batch)`` → a :class:`Batch` of memory [G', M', 1, H, W]
    and targets [G', T', 1, H, W] with G'·T' = G·T_view, and their labels (or a (memory, targets)
    pair). The likelihood never sees the labels (p(x | M) is of the memory as a set); the objective,
    whose terms a view with ``parts`` reports, gets them as in training. Every view of a pass runs
    under the same seed. ``progress``: a ``done(episodes)`` callback.
    """
    check_positive(samples=samples, episodes=episodes, chunk=chunk)
    spec, device = sampler.spec, device_of(model)
    per_pass, chunk = pass_shape(spec.num_targets, spec.memory_size + spec.num_targets, samples, chunk, device)
    tag = f"paired/{spec.ways}/{spec.distractors}/{spec.shots}/{spec.targets}"
    k_obj = objective_samples(model)
    out: dict[Any, dict[str, list]] = {name: {"ll": []} for name, _, _ in views}
    with eval_mode(model):
        for start in range(0, episodes, per_pass):
            b = sampler.batch(range(start, min(start + per_pass, episodes))).to(device)
            G = b.memory.shape[0]
            for name, select, parts in views:
                view = select(b)
                view = view if isinstance(view, Batch) else Batch(*view)
                memory, targets = view.memory, view.targets
                with seeded(derive_seed(seed, tag, start), device):  # the same noise in every view: paired rows
                    ll = log_likelihood(model, memory, targets, samples, chunk, exact_address)  # [G', T']
                    out[name]["ll"].append(ll.double().reshape(G, -1).cpu())
                    if parts:
                        obj = model.objective(view, k_obj)
                        for term, value in obj.terms.items():  # the family's objective terms, by name
                            out[name].setdefault(f"term:{term}", []).append(value.double().reshape(G, -1).cpu())
            if progress is not None:
                progress(min(start + per_pass, episodes))
    return {name: {k: torch.cat(v) for k, v in acc.items() if v} for name, acc in out.items()}


def row_fields(part: dict[str, torch.Tensor], samples: int) -> dict[str, Any]:
    """A row's NLL fields from one view's per-episode tensors."""
    nll, se = mean_se(-part["ll"].mean(1))
    E, T = part["ll"].shape
    terms = {k[len("term:"):]: float(v.mean()) for k, v in part.items() if k.startswith("term:")}
    return {
        "nll": nll, "stderr": se,
        "kl_address": terms.pop("kl_address", None), "kl_latent": terms.pop("kl_latent", None),
        **({"terms": terms} if terms else {}),
        "episodes": E, "targets": E * T, "samples": samples,
    }


def nll_over_episodes(model, sampler: EpisodeSampler, episodes: int, *, samples: int, chunk: int = 100, seed: int = 0,
                      exact_address: bool = False, progress=None) -> dict[str, Any]:
    """The K-sample NLL bound over episodes 0..episodes−1 of ``sampler``, with KL(q(a|x)||p(a))
    (None for models without an address) and KL(q(z)||p(z)) from the objective.

    ``nll`` is the mean over targets; ``stderr`` the standard error over the per-episode means.
    """
    parts = paired_passes(model, sampler, episodes, [("all", lambda b: (b.memory, b.targets), True)], samples=samples,
                          chunk=chunk, seed=seed, exact_address=exact_address, progress=progress)
    return row_fields(parts["all"], samples)


def examples_that_fit(dataset: Dataset, split: str, examples: Sequence[int] = DEFAULT_EXAMPLES) -> tuple[list[int], list[str]]:
    """(the n of ``examples`` whose episodes — n examples + 1 target of one class — the split supplies,
    a line per skipped n saying why)."""
    fit, skipped = [], []
    for n in examples:
        problem = spec_problem(EpisodeSpec(split=split, ways=1, shots=int(n), targets=1), dataset)
        if problem is None:
            fit.append(int(n))
        else:
            skipped.append(f"NLL vs examples: n={n} skipped: {problem}")
    return fit, skipped


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
    "kl_latent", "episodes", "targets", "samples", "nll_per_episode"}``.
    """
    dataset = open_dataset(dataset)
    say = as_progress(progress)
    fit, skipped = examples_that_fit(dataset, split, examples)
    for line in skipped:
        say.say(line)
    if not fit:
        return []
    spec = EpisodeSpec(split=split, ways=1, shots=max(fit), targets=1, binarize=binarize, threshold=threshold)
    views = [(n, (lambda b, n=n: Batch(b.memory[:, :n], b.targets, b.memory_labels[:, :n], b.target_labels)), True)
             for n in fit]
    with say.part(f"NLL vs examples, n={','.join(map(str, fit))}", episodes) as done:
        parts = paired_passes(model, EpisodeSampler(dataset, spec, seed), episodes, views, samples=samples, chunk=chunk,
                              seed=seed, exact_address=exact_address, progress=done)
    first = -parts[fit[0]]["ll"].mean(1)  # [E]
    rows = []
    for n in fit:
        nll_ep = -parts[n]["ll"].mean(1)  # [E]
        change, change_se = mean_se(nll_ep - first)
        rows.append({"examples": n, "memory_size": n, **row_fields(parts[n], samples),
                     "change": change, "change_stderr": change_se, "nll_per_episode": nll_ep.tolist()})
        say.say(f"NLL vs examples: {row_line('examples', rows[-1], fit[0])}")
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


def classes_spec(split: str, classes: int, examples_per_class: int, **data) -> EpisodeSpec:
    """The episodes of the NLL-vs-classes table with C = ``classes`` memory classes."""
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
        problem = spec_problem(classes_spec(split, C, examples_per_class), dataset)
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
    ``gap_stderr`` over per-episode differences; ``beats_optimum`` when the gap is negative.
    ``classes`` defaults to :func:`class_counts`; C = 1 is always computed. Counts the split
    cannot supply are skipped, saying so.
    """
    dataset = open_dataset(dataset)
    check_positive(examples_per_class=examples_per_class)
    say = as_progress(progress)
    fit, skipped = classes_that_fit(dataset, split, classes, examples_per_class, max_classes)
    for line in skipped:
        say.say(line)
    if not fit:
        return []
    s = examples_per_class
    spec = classes_spec(split, max(fit), s, binarize=binarize, threshold=threshold)
    T = spec.ways  # targets per episode, one per class 0..T−1; memory is class-major

    def own(b: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        G = b.memory.shape[0]
        memory = b.memory[:, : T * s].reshape(G * T, s, *b.memory.shape[2:])  # [G·T, s, 1, H, W]
        return memory, b.targets.reshape(G * T, 1, *b.targets.shape[2:])  # [G·T, 1, 1, H, W]

    views = [("own", own, False)]
    views += [(C, (lambda b, C=C: Batch(b.memory[:, : C * s], b.targets[:, : min(C, T)], b.memory_labels[:, : C * s],
                                        b.target_labels[:, : min(C, T)])), True) for C in fit]
    with say.part(f"NLL vs classes, C={','.join(map(str, fit))}", episodes) as done:
        parts = paired_passes(model, EpisodeSampler(dataset, spec, seed), episodes, views, samples=samples, chunk=chunk,
                              seed=seed, exact_address=exact_address, progress=done)
    own_nll = -parts["own"]["ll"]  # [E, T]: each target with its own class's examples alone
    rows = []
    for C in fit:
        nll_ep = -parts[C]["ll"].mean(1)  # [E]
        opt_ep = own_nll[:, : min(C, T)].mean(1) + math.log(C)  # [E]
        gap, gap_se = mean_se(nll_ep - opt_ep)
        rows.append({"classes": C, "examples_per_class": s, "memory_size": C * s, **row_fields(parts[C], samples),
                     "optimum": float(opt_ep.mean()), "gap": gap, "gap_stderr": gap_se, "beats_optimum": gap < 0,
                     "nll_per_episode": nll_ep.tolist()})
        say.say(f"NLL vs classes: {row_line('classes', rows[-1])}")
    return rows


def row_line(table: str, row: dict[str, Any], first: int | None = None) -> str:
    """A finished row in one line: ``n= 3: 95.20 nats (-0.84 vs n=1)`` / ``C=  4: 97.10 nats (optimum 96.40)``."""
    if table == "examples":
        return f"n={row['examples']:>2}: {row['nll']:.2f} nats ({row['change']:+.2f} vs n={first})"
    flag = ", below it: see the note" if row.get("beats_optimum") else ""
    return f"C={row['classes']:>3}: {row['nll']:.2f} nats (optimum {row['optimum']:.2f}{flag})"
