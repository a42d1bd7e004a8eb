"""The validation bound: the K-sample NLL bound, the objective's terms and the family's
classifier on fixed episodes (what training validates with, and ``varmem eval`` reports first).

Runs the parts the family's capabilities allow: the likelihood bound with ``Capability.LIKELIHOOD``,
accuracy with ``Capability.CLASSIFICATION`` (ties broken at random, seeded: the same classifier as
the protocol's), the objective's bound and terms always.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from varmem.episodes.sampler import EpisodeBatch
from varmem.models.base import Batch, Capability, FewShotModel
from varmem.models.eval.capabilities import GENERIC_CLASSIFIER
from varmem.models.eval.classification import correct_targets
from varmem.models.eval.passes import decodes_per_pass, eval_mode, seeded


# the fields of evaluate_bound's result that are not objective terms
RESERVED_KEYS = ("samples", "objective_samples", "nll_bound", "nll_bound_stderr", "nll_per_episode", "objective_nll_bound",
                 "accuracy", "accuracy_stderr", "episodes")


def few_shot_accuracy(model: FewShotModel, batch: EpisodeBatch, generator: torch.Generator | None = None) -> torch.Tensor:
    """The family's own classifier (``model.class_scores``: for address models the label with the most
    q(a|x) mass, VMA §4.3, no fine-tuning), through the protocol's one classifier rule
    (:func:`varmem.models.eval.classification.correct_targets`: ties at random from ``generator``).
    Correct or not, float [G, T]."""
    # "classifier": class_scores, whatever the family names it (q_a for address families, "matching", "kl", ...)
    return torch.from_numpy(correct_targets(model, batch, GENERIC_CLASSIFIER, ties=generator)).to(torch.float32)


@torch.no_grad()
def evaluate_bound(
    model: FewShotModel,
    batches: Iterable[EpisodeBatch],
    *,
    samples: int,
    num_samples: int,
    chunk: int,
    seed: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    per_episode: bool = False,
) -> dict[str, Any]:
    """The K-sample NLL bound (``log_likelihood`` with ``samples``), the objective's KL parts (with
    ``num_samples``) and, for models with a classifier, few-shot accuracy, on fixed episodes.

    Runs under a forked torch RNG seeded with ``seed``: the numbers are reproducible and the
    caller's RNG stream (the training noise) is untouched. Ties of the classifier are broken by a
    CPU generator seeded with ``seed``. ``progress(done)`` is called after each batch with the
    episodes done so far (e.g. ``varmem.models.eval.progress.Progress(emit).part(...)``'s callback,
    a bar on a terminal and milestone lines in a log; ``varmem.models.eval.cost.bound_cost`` says
    what the call costs). The objective's terms come under their names, except a term named like a
    field of the result (a classifier's ``accuracy`` term: "objective_accuracy"). ``per_episode``: also
    ``nll_per_episode``, each episode's NLL bound (the mean over its targets), in episode order, so that two
    models scored on the same episodes can be compared paired (``varmem compare``).
    """
    likelihood = model.supports(Capability.LIKELIHOOD)
    classifies = model.supports(Capability.CLASSIFICATION)
    per_episode: dict[str, list[torch.Tensor]] = {}

    def keep(name: str, values: torch.Tensor) -> None:  # [G, T] → the per-episode means
        per_episode.setdefault(name, []).append(values.double().mean(1).cpu())

    generator = torch.Generator().manual_seed(seed)  # the classifier's tie-breaks
    with seeded(seed, device), eval_mode(model):
        done = 0
        for batch in batches:
            b = Batch.of(batch.to(device))
            if likelihood:
                # ≤ decodes_per_pass (target, sample) decodes at a time: with the paper-size networks a
                # pass of 100 samples × 32 targets held 7.6 GB on the CPU, and passes that large are slower
                pass_chunk = max(1, min(chunk, decodes_per_pass(device) // b.targets.shape[:2].numel()))
                keep("log_likelihood", model.log_likelihood(b, samples, chunk=pass_chunk))  # [G, T]
            obj = model.objective(b, num_samples)
            if obj.bound is not None:
                keep("bound", obj.bound)
            for name, value in obj.terms.items():
                keep(f"term:{name}", value)
            if classifies:
                keep("accuracy", few_shot_accuracy(model, b, generator))
            done += b.targets.shape[0]
            if progress is not None:
                progress(done)
    out: dict[str, Any] = {"samples": samples, "objective_samples": num_samples}
    n = 0
    if "log_likelihood" in per_episode:
        ll = torch.cat(per_episode.pop("log_likelihood"))  # [episodes]
        n = ll.numel()
        out.update(nll_bound=float(-ll.mean()),
                   nll_bound_stderr=float(ll.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"))
        if per_episode:
            out["nll_per_episode"] = [round(-v, 4) for v in ll.tolist()]
    if "bound" in per_episode:
        out["objective_nll_bound"] = float(-torch.cat(per_episode.pop("bound")).mean())
    acc = torch.cat(per_episode.pop("accuracy")) if "accuracy" in per_episode else None
    for key, values in per_episode.items():  # the objective's terms, by name; one that a headline field takes
        name = key[len("term:"):]  # (a classifier's "accuracy" term beside the classifier's accuracy) gets "objective_"
        out["objective_" + name if name in RESERVED_KEYS else name] = float(torch.cat(values).mean())
        n = max(n, sum(v.numel() for v in values))
    if acc is not None:
        n = acc.numel()
        out["accuracy"] = float(acc.mean())
        out["accuracy_stderr"] = float(acc.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    out["episodes"] = n
    return out


