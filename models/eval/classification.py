"""Few-shot classification without fine-tuning: N-way K-shot, two readings of a generative model.

* ``q_a``: the family's classifier, ``model.class_scores``: for address models
  p(c|x) ≈ Σ_{a: label(a) = c} q(a|x) (VMA §4.3).
* ``likelihood``: p(c|x) ∝ p(x | M_c), M_c = class c's support only (every model that reads the
  episode's memory; C ``log_likelihood`` calls per target, so fewer samples).

One classifier rule: the predicted class is the argmax of the scores with ties broken uniformly at
random, seeded (:func:`varmem.models.base.argmax_random_ties`), never towards class 0. The
validation bound (:mod:`varmem.models.eval.bound`) classifies through :func:`correct_targets` too,
so validation and evaluation agree on the same episodes. Accuracy comes with 95% intervals
(:func:`varmem.models.eval.stats.accuracy_summary`).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeBatch, EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.models.base import Batch, argmax_random_ties
from varmem.models.eval.capabilities import METHODS, methods_for
from varmem.models.eval.passes import (IMAGES_PER_PASS, check_positive, derive_seed, device_of, eval_mode,
                                       log_likelihood, open_dataset, pass_shape, seeded)
from varmem.models.eval.stats import accuracy_summary

# (ways, shots) of the classification table (VMA §4.3: 91% / 97% / 77% / 90%).
DEFAULT_TASKS = ((5, 1), (5, 5), (20, 1), (20, 5))


def task_name(ways: int, shots: int) -> str:
    return f"{ways}way{shots}shot"


def class_log_scores(model, memory: torch.Tensor, memory_labels: torch.Tensor, targets: torch.Tensor, method: str, *,
                     samples: int = 10, chunk: int = 100, exact_address: bool = False) -> torch.Tensor:
    """log p(c|x) up to a constant per target, for the C = max label + 1 classes of memory: [G, T, C].

    memory [G, M, 1, H, W], memory_labels int [G, M], targets [G, T, 1, H, W].
    ``q_a``: ``model.class_scores`` (log Σ_{a: label(a)=c} q(a|x) for address models).
    ``likelihood``: log p(x | M_c), M_c = class c's entries only (the classes must have equally
    many entries).
    """
    if method == "q_a":
        return model.class_scores(Batch(memory, targets, memory_labels)).double()  # [G, T, C]
    if method == "likelihood":
        G, M = memory_labels.shape
        C = int(memory_labels.max()) + 1
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
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def correct_targets(model, batch: EpisodeBatch | Batch, method: str = "q_a", *, ties: torch.Generator | None,
                    samples: int = 10, chunk: int = 100, exact_address: bool = False) -> np.ndarray:
    """Correct or not per target, bool [G, T], for one batch of episodes (moved to the model's device):
    the argmax of :func:`class_log_scores`, ties broken at random with ``ties``."""
    b = Batch.of(batch).to(device_of(model))
    scores = class_log_scores(model, b.memory, b.memory_labels, b.targets, method, samples=samples, chunk=chunk,
                              exact_address=exact_address)  # [G, T, C]
    return (argmax_random_ties(scores, ties) == b.target_labels.cpu()).numpy()


def require_method(model, method: str) -> None:
    """A ValueError unless ``method`` is a classification method the model supports, saying why."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    why = methods_for(model)[method]
    if why is not None:
        raise ValueError(f"classification by {method!r}: {why}")


def accuracy_on_batches(model, batches: Iterable[EpisodeBatch], method: str = "q_a", *, ties: torch.Generator | None,
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
    if method == "q_a":
        return max(1, IMAGES_PER_PASS // (M + T)), chunk
    return pass_shape(C * T, M + C * T, samples, chunk, device_of(model))  # G·C rows of S entries and T targets


def classification_accuracy(model, dataset: Dataset | str, spec: EpisodeSpec, episodes: int = 1000, method: str = "q_a", *,
                            samples: int = 10, chunk: int = 100, seed: int = 0, exact_address: bool = False,
                            progress=None) -> dict[str, Any]:
    """N-way K-shot accuracy of ``model`` on episodes 0..episodes−1 of ``spec`` (no fine-tuning).

    ``method``: ``"q_a"`` (the family's class scores) or ``"likelihood"`` (p(x|M_c), ``samples``
    importance samples per class and target). Returns :func:`accuracy_summary`'s fields plus
    ``method``, ``ways``, ``shots`` (and ``samples`` for the likelihood). ``progress``: a
    ``done(episodes)`` callback.
    """
    check_positive(episodes=episodes, samples=samples, chunk=chunk)
    require_method(model, method)
    sampler = EpisodeSampler(open_dataset(dataset), spec, seed)
    per_pass, chunk = episodes_per_pass(model, spec, method, samples, chunk)
    tag = f"cls/{method}/{spec.ways}/{spec.shots}/{spec.targets}/{spec.distractors}"
    ties = torch.Generator().manual_seed(derive_seed(seed, tag, "ties"))
    batches = (sampler.batch(range(start, min(start + per_pass, episodes))) for start in range(0, episodes, per_pass))
    with seeded(derive_seed(seed, tag), device_of(model)):
        summary = accuracy_on_batches(model, batches, method, ties=ties, samples=samples, chunk=chunk,
                                      exact_address=exact_address, progress=progress)
    out = {"method": method, "ways": spec.ways, "shots": spec.shots, **summary}
    if method == "likelihood":
        out["samples"] = samples
    return out
