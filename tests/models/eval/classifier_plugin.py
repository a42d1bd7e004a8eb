"""A classifier-only family for the evaluation tests (a plugin: load it with ``--plugin PATH`` or
``varmem.models.registry.load_plugins([PATH])``, never by importing it, so that it registers once).

``eval_matching_stub``: Matching-Networks-like and nothing more — it declares CLASSIFICATION and
EMBEDDING only, names its classifier "matching", and has no likelihood, sampler or address.

    f(x) = W x (a linear embedding of the pixels), a(x̂, x_i) = softmax_i cos(f(x̂), f(x_i)) / τ,
    log p(c | x̂) = log Σ_{i: y_i = c} a(x̂, x_i)

trained on the cross-entropy of the queries (``cross_entropy`` and ``accuracy`` terms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.registry import FamilyConfig, register

NAME = "eval_matching_stub"


@dataclass(frozen=True)
class MatchingStubConfig(FamilyConfig):
    width: int = 16  # features of f
    temperature: float = 0.1  # τ

    def validate(self) -> None:
        self._require(self.width >= 1, "width", ">= 1")
        self._require(self.temperature > 0, "temperature", "> 0")


@register(NAME, MatchingStubConfig)
class MatchingStub(FewShotModel):
    capabilities = frozenset({Capability.CLASSIFICATION, Capability.EMBEDDING})
    classifier_method = "matching"
    classifier_label = "softmax of cosine attention"

    def __init__(self, config: MatchingStubConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.config, self.image_shape = config, tuple(image_shape)
        self.f = nn.Linear(image_shape[0] * image_shape[1], config.width)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.f(images.flatten(-3))  # [..., 1, H, W] → [..., width]

    def _class_scores(self, batch: Batch) -> torch.Tensor:
        C = batch.num_classes
        q = F.normalize(self._embed(batch.targets), dim=-1)  # [G, T, D]
        s = F.normalize(self._embed(batch.memory), dim=-1)  # [G, M, D]
        log_a = torch.log_softmax(torch.einsum("gtd,gmd->gtm", q, s) / self.config.temperature, -1)  # [G, T, M]
        onehot = F.one_hot(batch.memory_labels, C).bool()  # [G, M, C]
        return log_a.unsqueeze(-1).masked_fill(~onehot.unsqueeze(1), -math.inf).logsumexp(2)  # [G, T, C]

    def objective(self, batch: Batch, num_samples: int, *, generator=None) -> Objective:
        scores = self._class_scores(batch)  # [G, T, C]
        ce = F.cross_entropy(scores.flatten(0, 1), batch.target_labels.flatten(), reduction="none").view(scores.shape[:2])
        accuracy = (scores.argmax(-1) == batch.target_labels).float()
        return Objective(loss=ce.mean(), terms={"cross_entropy": ce, "accuracy": accuracy})
