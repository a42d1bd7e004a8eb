"""Few-shot classification without fine-tuning: N-way K-shot, one benchmark for every family.

Methods (which a model has: :mod:`varmem.models.eval.capabilities`):

* ``q_a``: ``model.class_scores`` of an address family: p(c|x) ≈ Σ_{a: label(a) = c} q(a|x) (VMA §4.3).
* the family's own classifier: ``model.class_scores`` of a family that names it
  (``FewShotModel.classifier_method``: Matching Networks' "matching", the Neural Statistician's "kl").
* ``likelihood``: p(c|x) ∝ p(x | M_c), M_c = class c's support only (every model that reads the
  episode's memory; C ``log_likelihood`` calls per target, so fewer samples and episodes).
* ``cosine``: the nearest support item by cosine similarity of ``model.embed`` features decides the
  query's class (1-nearest neighbour: a class scores the highest similarity among its items).
* ``pixel``: the same nearest neighbour on the raw pixels (no model, no training): the floor every
  table carries.
* ``hausdorff``: the nearest support image by Lake et al.'s modified Hausdorff distance between the
  images' centred ink-point sets (:mod:`varmem.models.eval.hausdorff`; no model, no training), on the
  episode's images at the model's size; ``hausdorff_native``: the same on the same episodes' images at
  their original resolution, from a dataset of the same source built at another ``--size`` (Lake's
  105×105; checked row by row by :func:`varmem.models.eval.hausdorff.check_same_episodes`).

Tasks (:class:`Task`): N-way K-shot with one query per class, the classes drawn **between
alphabets** (``EpisodeSpec(alphabet="any")``: uniformly from the whole split) or **within one
alphabet** (``alphabet="within"``, Lake-style and harder). Episode i of a task is a pure function of
(dataset split, task, seed, i): every model and every method scores the same episodes.

One classifier rule: the predicted class is the argmax of the scores with ties broken uniformly at
random, seeded (:func:`varmem.models.base.argmax_random_ties`), never towards class 0. The
validation bound (:mod:`varmem.models.eval.bound`) classifies through :func:`correct_targets` too,
so validation and evaluation agree on the same episodes. Accuracy comes with 95% intervals
(:func:`varmem.models.eval.stats.accuracy_summary`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeBatch, EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.models.base import Batch, argmax_random_ties
from varmem.models.eval.capabilities import (BASELINES, COSINE, GENERIC_CLASSIFIER, HAUSDORFF, HAUSDORFF_NATIVE, LABELS,
                                             LIKELIHOOD, NO_NATIVE_DATA, PIXEL, Q_A, classifier_of, method_label,
                                             methods_for)
from varmem.models.eval.hausdorff import check_same_episodes, hausdorff_distances
from varmem.models.eval.passes import (IMAGES_PER_PASS, check_positive, derive_seed, device_of, eval_mode,
                                       log_likelihood, open_dataset, pass_shape, seeded)
from varmem.models.eval.stats import accuracy_summary

# (ways, shots) of the classification table (VMA §4.3: 91% / 97% / 77% / 90%).
DEFAULT_TASKS = ((5, 1), (5, 5), (20, 1), (20, 5))
ALPHABETS = ("between", "within")  # how a task draws its classes: EpisodeSpec alphabet "any" / "within"
DEFAULT_ALPHABETS = ALPHABETS
_SPEC_ALPHABET = {"between": "any", "any": "any", "within": "within"}


def task_name(ways: int, shots: int, alphabet: str = "between") -> str:
    """The key of a task in results: ``5way1shot`` (between alphabets; the key results had before
    within-alphabet tasks existed) or ``5way1shot_within``."""
    return f"{ways}way{shots}shot" + ("_within" if alphabet_of(alphabet) == "within" else "")


def alphabet_of(name: str) -> str:
    """"between" (also "any", the EpisodeSpec name) or "within"; a ValueError for anything else."""
    if name not in _SPEC_ALPHABET:
        raise ValueError(f"alphabet must be one of between, within (or any = between), got {name!r}")
    return "within" if name == "within" else "between"


@dataclass(frozen=True)
class Task:
    """An N-way K-shot task: one query per class, classes between alphabets or within one."""

    ways: int
    shots: int
    alphabet: str = "between"

    @property
    def key(self) -> str:
        return task_name(self.ways, self.shots, self.alphabet)

    @property
    def name(self) -> str:
        return f"{self.ways}-way {self.shots}-shot" + (" within" if self.alphabet == "within" else "")

    def spec(self, split: str, **data: Any) -> EpisodeSpec:
        return EpisodeSpec.classification(split, ways=self.ways, shots=self.shots, queries=1,
                                          alphabet=_SPEC_ALPHABET[self.alphabet], **data)


def parse_task_key(key: str) -> Task | None:
    """The task of a result key (``5way1shot``, ``20way5shot_within``), or None for another key."""
    body, _, suffix = key.partition("_")
    ways, sep, shots = body.removesuffix("shot").partition("way")
    if not sep or not ways.isdigit() or not shots.isdigit() or suffix not in ("", "within") or not body.endswith("shot"):
        return None
    return Task(int(ways), int(shots), "within" if suffix else "between")


def tasks_of(shapes: Sequence[Sequence[Any]] = DEFAULT_TASKS, alphabets: Sequence[str] = DEFAULT_ALPHABETS) -> list[Task]:
    """The tasks of (ways, shots) ``shapes`` × ``alphabets``, every between-alphabet task first; a shape
    given as (ways, shots, alphabet) keeps its own alphabet."""
    modes = list(dict.fromkeys(alphabet_of(a) for a in alphabets))
    out: list[Task] = []
    for mode in ALPHABETS:
        for shape in shapes:
            if len(shape) == 3:
                if alphabet_of(shape[2]) == mode:
                    out.append(Task(int(shape[0]), int(shape[1]), mode))
            elif mode in modes:
                out.append(Task(int(shape[0]), int(shape[1]), mode))
    return list(dict.fromkeys(out))


def best_per_class(similarity: torch.Tensor, support_labels: torch.Tensor, classes: int) -> torch.Tensor:
    """The 1-nearest-neighbour rule: class c's score is the highest ``similarity`` [G, T, M] between a query
    and one of c's support items (labels [G, M]) → [G, T, C] (−inf for a class without items)."""
    onehot = torch.nn.functional.one_hot(support_labels.to(similarity.device), classes).bool()  # [G, M, C]
    masked = similarity.unsqueeze(-1).masked_fill(~onehot.unsqueeze(1), -torch.inf)  # [G, T, M, C]
    return masked.amax(dim=2)  # [G, T, C]


def nearest_neighbour_scores(query: torch.Tensor, support: torch.Tensor, support_labels: torch.Tensor,
                             classes: int) -> torch.Tensor:
    """1-nearest-neighbour class scores by cosine similarity, float64: query features [G, T, D], support
    features [G, M, D], labels [G, M] → [G, T, C], class c's score the highest cos(query, item) among
    its items (−inf for a class without items). An all-zero feature vector has similarity 0 to
    everything (its ties are broken at random by the classifier rule)."""
    q = torch.nn.functional.normalize(query.double(), dim=-1)  # [G, T, D]
    s = torch.nn.functional.normalize(support.double(), dim=-1)  # [G, M, D]
    sim = torch.einsum("gtd,gmd->gtm", q, s)  # [G, T, M]
    return best_per_class(sim, support_labels, classes)  # [G, T, C]


def hausdorff_scores(targets: torch.Tensor, memory: torch.Tensor, memory_labels: torch.Tensor,
                     classes: int) -> torch.Tensor:
    """1-nearest-neighbour class scores by the modified Hausdorff distance, float64 [G, T, C]: class c's
    score is −(the smallest MHD between the target and one of c's items) — Lake's ``argmin`` over the
    training images; targets [G, T, 1, H, W], memory [G, M, 1, H, W], labels [G, M]. A class whose items
    have no ink scores −inf against a target with ink (and 0 against an inkless target)."""
    return best_per_class(-hausdorff_distances(targets, memory), memory_labels.cpu(), classes)  # [G, T, C]


def is_classifier_method(model, method: str) -> bool:
    """Whether ``method`` names ``model.class_scores``: the family's classifier name, or "q_a" /
    "classifier" (what validation calls it, whatever the family names it)."""
    return method in (Q_A, GENERIC_CLASSIFIER) or (model is not None and method == classifier_of(model)[0])


def class_log_scores(model, memory: torch.Tensor, memory_labels: torch.Tensor, targets: torch.Tensor, method: str, *,
                     samples: int = 10, chunk: int = 100, exact_address: bool = False) -> torch.Tensor:
    """log p(c|x) up to a constant per target (or a score with the same argmax), for the C = max label
    + 1 classes of memory: [G, T, C].

    memory [G, M, 1, H, W], memory_labels int [G, M], targets [G, T, 1, H, W].
    ``q_a`` or the family's classifier name: ``model.class_scores``.
    ``likelihood``: log p(x | M_c), M_c = class c's entries only (the classes must have equally
    many entries). ``cosine``: :func:`nearest_neighbour_scores` of ``model.embed`` features;
    ``pixel``: of the flattened pixels; ``hausdorff`` and ``hausdorff_native``: :func:`hausdorff_scores` of
    the images given (``model`` unused by these three; may be None).
    """
    C = int(memory_labels.max()) + 1
    if method == PIXEL:
        return nearest_neighbour_scores(targets.flatten(2), memory.flatten(2), memory_labels, C)
    if method in (HAUSDORFF, HAUSDORFF_NATIVE):
        return hausdorff_scores(targets, memory, memory_labels, C)
    if method == COSINE:
        G, M, T = memory.shape[0], memory.shape[1], targets.shape[1]
        features = model.embed(torch.cat([memory, targets], dim=1))  # [G, M + T, D]
        return nearest_neighbour_scores(features[:, M:], features[:, :M], memory_labels, C)
    if method == LIKELIHOOD:
        G, M = memory_labels.shape
        counts = torch.nn.functional.one_hot(memory_labels, C).sum(1)  # [G, C]
        if not bool((counts == counts[:, :1]).all()) or int(counts[0, 0]) * C != M:
            raise ValueError(f"likelihood classification needs equally many memory entries per class, got counts {counts[0].tolist()}")
        S, T = M // C, targets.shape[1]
        order = torch.argsort(memory_labels, dim=1, stable=True)  # [G, M]: class-major
        support = torch.gather(memory, 1, order.view(G, M, 1, 1, 1).expand_as(memory))  # [G, M, 1, H, W]
        support = support.reshape(G * C, S, *memory.shape[2:])  # [G·C, S, 1, H, W]
        tgt = targets.unsqueeze(1).expand(G, C, *targets.shape[1:]).reshape(G * C, *targets.shape[1:])  # [G·C, T, 1, H, W]
        ll = log_likelihood(model, support, tgt, samples, chunk, exact_address)  # [G·C, T]
        return ll.double().view(G, C, T).transpose(1, 2)  # [G, T, C]
    if is_classifier_method(model, method):
        return model.class_scores(Batch(memory, targets, memory_labels)).double()  # [G, T, C]
    raise ValueError(f"method must be one of {', '.join(known_methods(model))}, got {method!r}")


def known_methods(model) -> list[str]:
    """Every method name :func:`class_log_scores` takes for ``model`` (supported or not)."""
    return [*(methods_for(model) if model is not None else ()), *BASELINES]


def correct_targets(model, batch: EpisodeBatch | Batch, method: str = Q_A, *, ties: torch.Generator | None,
                    samples: int = 10, chunk: int = 100, exact_address: bool = False) -> np.ndarray:
    """Correct or not per target, bool [G, T], for one batch of episodes (moved to the model's device):
    the argmax of :func:`class_log_scores`, ties broken at random with ``ties``."""
    b = Batch.of(batch).to(device_of(model))
    scores = class_log_scores(model, b.memory, b.memory_labels, b.targets, method, samples=samples, chunk=chunk,
                              exact_address=exact_address)  # [G, T, C]
    return (argmax_random_ties(scores, ties) == b.target_labels.cpu()).numpy()


def require_method(model, method: str, *, native: bool = False, no_native: str = NO_NATIVE_DATA) -> None:
    """A ValueError unless ``method`` is a classification method the model supports, saying why. The
    baselines need no model; ``hausdorff_native`` needs ``native`` (the images at their original
    resolution; ``no_native``: what to say when they are missing)."""
    if method == HAUSDORFF_NATIVE and not native:
        raise ValueError(f"classification by {method!r} {no_native}")
    if method in BASELINES:
        return
    if model is None:
        raise ValueError(f"classification by {method!r} needs a model (only {', '.join(BASELINES)} run without one)")
    methods = methods_for(model)
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(known_methods(model))}, got {method!r}")
    if methods[method] is not None:
        raise ValueError(f"classification by {method!r}: {methods[method]}")


def accuracy_on_batches(model, batches: Iterable[EpisodeBatch], method: str = Q_A, *, ties: torch.Generator | None,
                        samples: int = 10, chunk: int = 100, exact_address: bool = False,
                        progress=None) -> dict[str, Any]:
    """:func:`accuracy_summary` of ``method`` over the episodes of ``batches``, in eval mode, under the
    caller's RNG (seed it for the likelihood's samples); ``progress``: a ``done(episodes)`` callback."""
    correct: list[np.ndarray] = []
    with eval_mode(model):
        for batch in batches:
            correct.extend(correct_targets(model, batch, method, ties=ties, samples=samples, chunk=chunk,
                                           exact_address=exact_address))
            if progress is not None:
                progress(len(correct))
    return accuracy_summary(correct)


def episodes_per_pass(model, spec: EpisodeSpec, method: str, samples: int, chunk: int) -> tuple[int, int]:
    """(episodes per pass, samples per chunk) of ``method`` on episodes of ``spec``."""
    C, M, T = spec.memory_classes, spec.memory_size, spec.num_targets
    if method != LIKELIHOOD:  # encoder or embedding passes, or pixels
        return max(1, IMAGES_PER_PASS // (M + T)), chunk
    return pass_shape(C * T, M + C * T, samples, chunk, device_of(model))  # G·C rows of S entries and T targets


def method_entry(model, method: str, **fields: Any) -> dict[str, Any]:
    """What a result says of its method: its name and printed label, then ``fields``."""
    return {"method": method, "label": method_label(method, model), **fields}


def classification_accuracy(model, dataset: Dataset | str, spec: EpisodeSpec, episodes: int = 1000, method: str = Q_A, *,
                            samples: int = 10, chunk: int = 100, seed: int = 0, exact_address: bool = False,
                            native: Dataset | str | None = None, progress=None) -> dict[str, Any]:
    """N-way K-shot accuracy of ``model`` on episodes 0..episodes−1 of ``spec`` (no fine-tuning).

    ``method``: ``"q_a"`` or the family's classifier name (its class scores), ``"likelihood"``
    (p(x|M_c), ``samples`` importance samples per class and target), ``"cosine"`` (nearest
    neighbour on ``model.embed``), or a baseline (``model`` may be None): ``"pixel"`` (nearest
    neighbour on pixels), ``"hausdorff"`` (by the modified Hausdorff distance) or
    ``"hausdorff_native"`` (the same on the same episodes drawn from ``native``, the data at its
    original resolution: a DataError unless it holds the same rows as ``dataset``). Returns
    :func:`accuracy_summary`'s fields plus ``method``, ``label`` (a Hausdorff label names the image
    size), ``ways``, ``shots``, ``alphabet`` (and ``samples`` for the likelihood). ``progress``: a
    ``done(episodes)`` callback.
    """
    check_positive(episodes=episodes, samples=samples, chunk=chunk)
    require_method(model, method, native=native is not None)
    source = open_dataset(dataset)
    if method == HAUSDORFF_NATIVE:
        native = open_dataset(native)
        check_same_episodes(source, native, spec.split)
        source = native  # the same classes, items and alphabets: the sampler draws the same episodes
    sampler = EpisodeSampler(source, spec, seed)
    per_pass, chunk = episodes_per_pass(model, spec, method, samples, chunk)
    tag = f"cls/{method}/{spec.ways}/{spec.shots}/{spec.targets}/{spec.distractors}" + (
        "/within" if spec.alphabet == "within" else "")
    ties = torch.Generator().manual_seed(derive_seed(seed, tag, "ties"))
    batches = (sampler.batch(range(start, min(start + per_pass, episodes))) for start in range(0, episodes, per_pass))
    with seeded(derive_seed(seed, tag), device_of(model)):
        summary = accuracy_on_batches(model, batches, method, ties=ties, samples=samples, chunk=chunk,
                                      exact_address=exact_address, progress=progress)
    out = method_entry(model, method, ways=spec.ways, shots=spec.shots,
                       alphabet="within" if spec.alphabet == "within" else "between", **summary)
    if method in (HAUSDORFF, HAUSDORFF_NATIVE):
        out["label"] = hausdorff_label(sampler.split.image_shape)
    if method == LIKELIHOOD:
        out["samples"] = samples
    return out


def hausdorff_label(image_shape: Sequence[int]) -> str:
    """``modified Hausdorff NN, 105×105``: the label of a Hausdorff result, with the size it was computed at."""
    return f"{LABELS[HAUSDORFF]}, {image_shape[0]}×{image_shape[1]}"
