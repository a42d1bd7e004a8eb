"""The interface every model family in varmem implements.

Trainer, evaluation and Ray workers talk to models only through this interface, so that every
family (VMA, the VAE, soft attention, and the families that follow) is interchangeable in configs.

* A model gets a :class:`Batch`: memory, targets and their labels.
* ``objective(batch, num_samples)`` returns an :class:`Objective`: the loss, the per-target
  bound on log p(x|M) when the model has one, and named per-target ``terms`` (reconstruction,
  KL of each latent, ...), which the trainer, TensorBoard, Tune and evaluation log by name.
* What else a model can do is declared, not detected: ``capabilities`` lists the
  :class:`Capability` values whose methods it implements. Calling a method of a capability the
  family does not declare raises :class:`CapabilityError` naming the family and what it declares.

A family implements the protected hooks (``_log_likelihood``, ``_address_log_posterior``,
``_sample_logits``, ``_class_scores``, ``_embed``); the public methods check the capability and the
arguments and call them.

Shapes: ``G`` episodes, ``M`` memory entries, ``T`` targets per episode, ``K`` posterior
samples, ``C`` classes, images ``[1, H, W]`` with values in [0, 1] (binarized or grey; the
Bernoulli likelihood takes grey values as targets, as is usual for Omniglot at 28×28).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
from torch import nn


class Capability(str, enum.Enum):
    """What a model family can do besides training on its objective."""

    LIKELIHOOD = "likelihood"  # log_likelihood: the K-sample importance-sampled bound on log p(x|M)
    ADDRESS = "address_posterior"  # address_log_posterior: q(a | x, M) over memory entries
    SAMPLING = "sampling"  # sample: images from p(x | M)
    CLASSIFICATION = "classification"  # class_scores / classify: scores over the episode's classes
    EMBEDDING = "embedding"  # embed: one feature vector per image


class CapabilityError(NotImplementedError):
    """A model was asked for something its family does not declare."""


@dataclass
class Batch:
    """What a model gets: an episode batch.

    memory [G, M, 1, H, W] (None for models that ignore memory, or read a learned one),
    targets [G, T, 1, H, W], memory_labels [G, M] and target_labels [G, T] (int64 episode-local
    class indices 0..C−1; None when unknown, e.g. in a pure density estimate).
    """

    memory: torch.Tensor | None
    targets: torch.Tensor
    memory_labels: torch.Tensor | None = None
    target_labels: torch.Tensor | None = None

    @classmethod
    def of(cls, episodes: Any) -> "Batch":
        """A Batch from anything with memory/targets/memory_labels/target_labels (an EpisodeBatch)."""
        if isinstance(episodes, Batch):
            return episodes
        return cls(episodes.memory, episodes.targets, getattr(episodes, "memory_labels", None),
                   getattr(episodes, "target_labels", None))

    @property
    def episodes(self) -> int:
        return int(self.targets.shape[0])

    @property
    def num_classes(self) -> int:
        """C: the number of classes in the episode's labels (memory and targets)."""
        labels = [t for t in (self.memory_labels, self.target_labels) if t is not None]
        if not labels:
            raise ValueError("this batch carries no labels: class scores need memory_labels or target_labels")
        return int(max(int(t.max()) for t in labels if t.numel())) + 1

    def select(self, index: slice | int) -> "Batch":
        """Episodes ``index`` (a slice, or one episode kept as G = 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        pick = (lambda t: None if t is None else t[index])
        return Batch(pick(self.memory), self.targets[index], pick(self.memory_labels), pick(self.target_labels))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = (lambda t: None if t is None else t.to(device, non_blocking=non_blocking))
        return Batch(move(self.memory), move(self.targets), move(self.memory_labels), move(self.target_labels))


@dataclass
class Objective:
    """A training objective and its parts, per target, in nats.

    loss: scalar to minimize (mean over the G·T targets of the family's surrogate).
    bound: [G, T] the objective's lower bound on log p(x | M) (VMA eq. 7), or None for a family
        without a likelihood (a classifier).
    terms: named per-target parts, [G, T] each, e.g. ``reconstruction`` (E_q log p(x|...)),
        ``kl_address``, ``kl_latent``; a classifier reports ``cross_entropy`` and ``accuracy``.
        Logged by name everywhere: nothing outside the family knows the names.
    """

    loss: torch.Tensor
    bound: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Means over targets, as plain floats, for logging."""
        out = {"loss": float(self.loss.detach())}
        if self.bound is not None:
            bound = float(self.bound.detach().mean())
            out.update(bound=bound, nll_bound=-bound)
        for name, value in self.terms.items():
            out[name] = float(value.detach().float().mean())
        return out

    def names(self) -> list[str]:
        """The logged names of :meth:`metrics`, in order."""
        return ["loss"] + (["bound", "nll_bound"] if self.bound is not None else []) + list(self.terms)

    @staticmethod
    def concat(parts: list["Objective"]) -> "Objective":
        """The objective of several episode groups: mean loss, bound and terms concatenated along G."""
        if len(parts) == 1:
            return parts[0]
        bound = None if parts[0].bound is None else torch.cat([o.bound for o in parts])
        return Objective(
            loss=torch.stack([o.loss for o in parts]).mean(),
            bound=bound,
            terms={name: torch.cat([o.terms[name] for o in parts]) for name in parts[0].terms},
        )


class FewShotModel(nn.Module):
    """A few-shot model: trained episodically on :class:`Batch` objects.

    Class attributes a family sets:
      ``capabilities``: the :class:`Capability` values it implements (an instance may narrow them
      from its config, e.g. VMA with a learned memory has no labelled entries to classify by);
      ``uses_memory``: False when the memory argument is ignored (the VAE);
      ``min_num_samples``: the smallest K its objective accepts (VMA: 2, for VIMCO);
      ``min_memory_size``: the fewest memory entries it conditions on (1 for a model that reads
      the episode's memory; 0 for one that also generates from an empty set, e.g. GMN with
      pseudo-inputs, the Neural Statistician, the sequential model, or the VAE). A batch with
      fewer entries must raise a ValueError saying so (the NLL tables skip such rows);
      ``classifier_method``, ``classifier_label``: the name and the printed label of the family's own
      classifier (``class_scores``) in the evaluation's tables (``varmem eval``, ``varmem compare``).
      "" (the default) means: ``"q_a"`` / "q(a|x)" for a family that declares ADDRESS (the default
      ``_class_scores`` is the address posterior's mass per class, VMA §4.3), else ``"classifier"`` /
      "the family's class_scores". A family that declares CLASSIFICATION and overrides
      ``_class_scores`` with a classifier of its own names it here, e.g. Matching Networks
      ``"matching"`` / "softmax of cosine attention", the Neural Statistician ``"kl"`` /
      "−KL(q(c|x) ‖ q(c|D_k))". The names ``likelihood``, ``cosine`` and ``pixel`` are the
      benchmark's own methods and may not be used (:mod:`varmem.models.eval.capabilities`);
      ``family``: set by :func:`varmem.models.registry.register`.
    ``self.config`` is the family's typed config, ``self.image_shape`` (H, W).
    """

    family: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    uses_memory: ClassVar[bool] = True
    min_num_samples: ClassVar[int] = 1
    classifier_method: ClassVar[str] = ""  # "" = "q_a" with ADDRESS, else "classifier" (see the class docstring)
    classifier_label: ClassVar[str] = ""

    @property
    def min_memory_size(self) -> int:
        """The fewest memory entries the model conditions on (overridden by families that take M = 0)."""
        return 1 if self.uses_memory else 0

    # --- what every family implements -----------------------------------------------------------
    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        """The training objective of ``batch`` with ``num_samples`` (K) posterior samples per target."""
        raise NotImplementedError

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (dicts with "params" and optional per-group settings).

        The default: every trainable parameter in one group, but parameters named by
        :meth:`no_weight_decay` get a second group with weight_decay 0 when ``weight_decay`` > 0.
        """
        exempt = set(self.no_weight_decay())
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if exempt and weight_decay > 0:
            return [{"params": [p for n, p in named if n not in exempt]},
                    {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]
        return [{"params": [p for _, p in named]}] if named else []

    def no_weight_decay(self) -> Iterable[str]:
        """Names of parameters trained without weight decay (e.g. learned memory entries)."""
        return ()

    # --- capabilities ---------------------------------------------------------------------------
    def supports(self, capability: Capability | str) -> bool:
        return Capability(capability) in self.capabilities

    def require(self, capability: Capability | str, op: str | None = None) -> None:
        """Raise :class:`CapabilityError` unless the family declares ``capability``."""
        capability = Capability(capability)
        if capability not in self.capabilities:
            declared = ", ".join(sorted(c.value for c in self.capabilities)) or "none"
            raise CapabilityError(
                f"{op or type(self).__name__}: the {self.family or type(self).__name__!r} family does not declare "
                f"the {capability.value!r} capability (it declares: {declared})"
            )

    @torch.no_grad()
    def log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *,
                       generator: torch.Generator | None = None, **options: Any) -> torch.Tensor:
        """Importance-sampled bound log (1/K) Σ_k w_k on log p(x|M), [G, T], in nats.

        Samples are drawn ``chunk`` at a time and merged with a running log-sum-exp, so that
        memory stays bounded whatever ``num_samples`` is (1,000 to 5,000 in evaluation).
        """
        self.require(Capability.LIKELIHOOD, "log_likelihood")
        return self._log_likelihood(Batch.of(batch), num_samples, chunk, generator=generator, **options)

    @torch.no_grad()
    def address_log_posterior(self, batch: Batch) -> torch.Tensor:
        """log q(a | x, M) over memory entries, [G, T, M]."""
        self.require(Capability.ADDRESS, "address_log_posterior")
        return self._address_log_posterior(Batch.of(batch))

    @torch.no_grad()
    def sample(self, memory: torch.Tensor | None, num: int, *, generator: torch.Generator | None = None,
               kind: str = "mean") -> torch.Tensor:
        """``num`` images from p(x | M) per episode: [G, num, 1, H, W].

        kind="mean": the Bernoulli means of p(x | z, ...) (grey; what papers usually show);
        kind="binary": pixels drawn from those Bernoullis (true samples of p(x | M)).
        """
        self.require(Capability.SAMPLING, "sample")
        if kind not in ("mean", "binary"):
            raise ValueError(f"sample: kind must be 'mean' or 'binary', got {kind!r}")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"sample: num must be an int >= 1, got {num!r}")
        probs = torch.sigmoid(self._sample_logits(memory, num, generator=generator))
        if kind == "binary":
            return torch.bernoulli(probs, generator=generator)
        return probs

    @torch.no_grad()
    def class_scores(self, batch: Batch) -> torch.Tensor:
        """Scores of each target over the episode's C classes (log-probabilities or logits), [G, T, C].

        Families with an address posterior get it for free: p(c|x) ≈ Σ_{a: label(a) = c} q(a|x)
        (VMA §4.3), as log-mass.
        """
        self.require(Capability.CLASSIFICATION, "class_scores")
        batch = Batch.of(batch)
        if batch.memory_labels is None:
            raise ValueError("class_scores: the batch carries no memory_labels (the classes of the memory entries)")
        return self._class_scores(batch)

    @torch.no_grad()
    def classify(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """The predicted class of each target, [G, T] int64; ties broken at random (``generator``)."""
        return argmax_random_ties(self.class_scores(batch), generator)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """One feature vector per image: images [..., 1, H, W] → [..., D]."""
        self.require(Capability.EMBEDDING, "embed")
        return self._embed(images)

    # --- hooks a family overrides for the capabilities it declares --------------------------------
    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int, *, generator=None, **options) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares likelihood but does not implement _log_likelihood")

    def _address_log_posterior(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares address_posterior but does not implement it")

    def _sample_logits(self, memory: torch.Tensor | None, num: int, *, generator=None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares sampling but does not implement _sample_logits")

    def _class_scores(self, batch: Batch) -> torch.Tensor:
        if Capability.ADDRESS in self.capabilities:
            return address_class_log_mass(self._address_log_posterior(batch), batch.memory_labels, batch.num_classes)
        raise NotImplementedError(f"{type(self).__name__} declares classification but does not implement _class_scores")

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares embedding but does not implement _embed")


def address_class_log_mass(log_q: torch.Tensor, memory_labels: torch.Tensor, classes: int) -> torch.Tensor:
    """log Σ_{a: label(a) = c} q(a|x) in float64: log_q [G, T, M], labels [G, M] → [G, T, C] (−inf for absent classes)."""
    onehot = torch.nn.functional.one_hot(memory_labels, classes).bool()  # [G, M, C]
    masked = log_q.double().unsqueeze(-1).masked_fill(~onehot.unsqueeze(1), -math.inf)  # [G, T, M, C]
    return torch.logsumexp(masked, dim=2)  # [G, T, C]


def argmax_random_ties(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """argmax over the last dim, a tie broken uniformly at random: [..., C] → [...] int64 (on the CPU).

    The one classifier rule of varmem: validation, evaluation and the notebook API all use it
    (breaking ties toward class 0 would flatter a model whose scores collapse). The random keys
    are float64 on the CPU, so a seeded ``generator`` gives the same choices on every device.
    """
    scores = scores.detach().to("cpu", torch.float64)
    best = scores.max(-1, keepdim=True).values
    keys = torch.rand(scores.shape, generator=generator, dtype=torch.float64)
    return keys.masked_fill(~(scores >= best), -1.0).argmax(-1)
