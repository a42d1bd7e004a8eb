"""The seed papers' numbers, printed beside ours where a row matches — never mixed with ours.

Every number here is the seeds' (their data, image size, split, training and K), from
/work/shared/notes/papers.md ("Wave 2 facts" and VMA's Table 1 and §4.3). Ours are measured on
whatever ``varmem eval`` was given (e.g. strokes at 26×26), so a difference says as much about
the protocols as about the models; the report and ``varmem compare`` label every seed number with
its source and protocol.

A seed row *matches* one of ours when the family (the registry name) agrees and, for NLL, the
C_test and n; for accuracy, the method name and a between-alphabet task (the seeds' N-way tasks
draw classes from any test alphabet).
"""
from __future__ import annotations

from dataclasses import dataclass, field

TALK = "Bartunov's talk \"Few-shot generative modelling\""
TALK_PROTOCOL = "Omniglot 28×28, Bartunov & Vetrov's split, K = 1000"


@dataclass(frozen=True)
class SeedNLL:
    """A seed's NLL (nats) against conditioning examples n, for C_test classes in the set."""

    family: str  # the registry name of our family that this is a number for
    model: str  # the seed's model, as it names it
    source: str
    protocol: str
    classes: int  # C_test
    nll: dict[int, float]  # n → nats
    note: str = ""


@dataclass(frozen=True)
class SeedAccuracy:
    """A seed's N-way K-shot accuracy (%) by one method, on between-alphabet tasks."""

    family: str
    model: str
    method: str  # our method name: q_a, likelihood, cosine, or the family's classifier (matching, kl)
    source: str
    protocol: str
    accuracy: dict[tuple[int, int], float] = field(default_factory=dict)  # (ways, shots) → %
    note: str = ""
    method_label: str = ""  # how the method is printed, where our tables' LABELS do not know it (a family's own)


NLL_SEEDS: tuple[SeedNLL, ...] = (
    SeedNLL("gmn", "GMN (C_train = 2, pseudo-input)", TALK, TALK_PROTOCOL, 1,
            {0: 89.7, 1: 83.3, 2: 78.9, 3: 75.7, 4: 72.9, 5: 70.1, 10: 59.9, 19: 45.8},
            "n ≥ 1 as in VMA's Table 1 (GMN, C = 1)"),
    SeedNLL("gmn", "GMN (C_train = 2, pseudo-input)", TALK, TALK_PROTOCOL, 4, {0: 89.3, 19: 73.7},
            "our notes keep only the first and last n"),
    SeedNLL("gmn", "GMN without pseudo-input", TALK, TALK_PROTOCOL, 1, {1: 93.5}, "no 0-example row"),
    SeedNLL("gmn", "GMN (preprint's Table 1, 1 class)", "Bartunov & Vetrov preprint",
            "Omniglot 28×28, the canonical 30/20 split", 1, {0: 90.9, 1: 82.8, 2: 78.8, 3: 76.4, 4: 74.2, 9: 64.6}),
    SeedNLL("neural_statistician", "Neural Statistician (C_train = 1)", TALK, TALK_PROTOCOL, 1,
            {2: 102.0, 3: 83.4, 4: 77.8, 5: 75.2, 10: 74.6, 19: 71.7},
            "C_test as we read the talk's table (1)"),
    SeedNLL("vae", "VAE", TALK, TALK_PROTOCOL, 1, {0: 89.1}, "a VAE ignores the set: the same at every n"),
    SeedNLL("vae", "VAE (GMN preprint)", "Bartunov & Vetrov preprint", "Omniglot 28×28, the canonical 30/20 split", 1,
            {0: 89.2}, "a VAE ignores the set: the same at every n"),
    SeedNLL("vma", "VMA (its Table 1)", "Bornschein et al. 2017, Table 1", TALK_PROTOCOL, 1,
            {1: 86.5, 2: 83.0, 3: 79.6, 4: 79.0, 5: 76.5, 10: 76.2, 19: 73.9}),
)

TASKS4 = ((5, 1), (5, 5), (20, 1), (20, 5))


def _four(*values: float) -> dict[tuple[int, int], float]:
    return dict(zip(TASKS4, values))


ACCURACY_SEEDS: tuple[SeedAccuracy, ...] = (
    SeedAccuracy("vma", "VMA", "q_a", "Bornschein et al. 2017, §4.3",
                 "Omniglot 26×26, 45/5 alphabet split (144 test characters)", _four(91.0, 97.0, 77.0, 90.0)),
    SeedAccuracy("gmn", "GMN", "likelihood", TALK, "Omniglot 28×28", _four(82.7, 97.4, 64.3, 90.8)),
    SeedAccuracy("gmn", "GMN", "cosine", TALK, "Omniglot 28×28", _four(62.7, 80.8, 45.1, 67.2)),
    SeedAccuracy("neural_statistician", "Neural Statistician", "likelihood", TALK, "Omniglot 28×28",
                 _four(82.0, 94.8, 63.1, 87.6)),
    SeedAccuracy("neural_statistician", "Neural Statistician", "kl", "Edwards & Storkey 2017", "Omniglot, their split",
                 {(5, 1): 98.1, (20, 1): 93.2}, "a public PyTorch port reached only 95.7 / 85.6",
                 "−KL(q(c|x) ‖ q(c|D_k))"),
    SeedAccuracy("matching_networks", "Matching Networks", "matching", "Vinyals et al. 2016 (and the talk)",
                 "Omniglot 28×28, the full background set", _four(98.1, 98.9, 93.8, 98.5), "no fine-tuning",
                 "softmax of cosine attention"),
)


def nll_seeds(family: str | None) -> list[SeedNLL]:
    return [s for s in NLL_SEEDS if family and s.family == family]


def accuracy_seeds(family: str | None, method: str | None = None) -> list[SeedAccuracy]:
    return [s for s in ACCURACY_SEEDS if family and s.family == family and method in (None, s.method)]


def seed_label(seed: SeedNLL | SeedAccuracy) -> str:
    """``seed: GMN (C_train = 2, pseudo-input) [Bartunov's talk; Omniglot 28×28, ...]``."""
    return f"seed: {seed.model} [{seed.source}; {seed.protocol}]"


SEED_NOTE = ("seed rows are the papers' own numbers (their data, image size, split, training and K), not ours: "
             "they show the shape to expect, not a like-for-like comparison")
