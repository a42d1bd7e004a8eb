"""Split policies: which split each class belongs to. Deterministic and recorded in the manifest.

* ``release`` — the source's own split (Omniglot: background / evaluation; strokes: background /
  evaluation alphabets chosen by its seed; folder and others: ``all``).
* ``alphabets`` — the named alphabets are held out as ``test``, the rest is ``train`` (e.g. the
  five VMA test alphabets Tengwar, Sylheti, Tibetan, Syriac_(Serto), ULOG).
* ``characters`` — within every alphabet, a seeded ``fraction`` of its characters is ``test``,
  the rest ``train``. Never an unseeded shuffle: the seed is in the manifest.

Whatever the policy, a run names the splits it needs by role, ``train`` and ``eval``
(``varmem.episodes.roles``): background and train play train, evaluation and test play eval.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from varmem.episodes.errors import DataError
from varmem.episodes.sources.base import ClassRecord

POLICIES = ("release", "alphabets", "characters")
# Five test alphabets of the VMA few-shot experiments (45/5 split of all 50 alphabets).
VMA_TEST_ALPHABETS = ("Tengwar", "Sylheti", "Tibetan", "Syriac_(Serto)", "ULOG")


@dataclass(frozen=True)
class SplitPolicy:
    policy: str = "release"
    heldout_alphabets: tuple[str, ...] = field(default=())
    fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DataError(f"--split must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.policy == "alphabets" and not self.heldout_alphabets:
            raise DataError("--split alphabets needs at least one --heldout-alphabet NAME")
        if self.policy != "alphabets" and self.heldout_alphabets:
            raise DataError("--heldout-alphabet is only used with --split alphabets")
        if self.policy == "characters" and not (0.0 < self.fraction < 1.0):
            raise DataError(f"--heldout-fraction must be in (0, 1), got {self.fraction}")

    def describe(self) -> dict:
        d: dict = {"policy": self.policy}
        if self.policy == "alphabets":
            d["heldout_alphabets"] = list(self.heldout_alphabets)
        if self.policy == "characters":
            d.update(fraction=self.fraction, seed=self.seed)
        return d

    def assign(self, records: list[ClassRecord]) -> list[str]:
        """The split name of each record, in order."""
        if self.policy == "release":
            return [r.release_split for r in records]
        if self.policy == "alphabets":
            present = {r.alphabet for r in records}
            unknown = [a for a in self.heldout_alphabets if a not in present]
            if unknown:
                raise DataError(
                    f"--heldout-alphabet {', '.join(map(repr, unknown))} not in the source; "
                    f"alphabets are: {', '.join(sorted(present))}"
                )
            held = set(self.heldout_alphabets)
            if held == present:
                raise DataError("--heldout-alphabet names every alphabet: nothing is left for train")
            return ["test" if r.alphabet in held else "train" for r in records]
        # characters: seeded per alphabet, independent of the other alphabets.
        by_alphabet: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            by_alphabet[r.alphabet].append(i)
        out = ["train"] * len(records)
        for alphabet, idx in by_alphabet.items():
            idx = sorted(idx, key=lambda i: records[i].character)
            n_test = int(round(self.fraction * len(idx)))
            if len(idx) >= 2:
                n_test = min(max(n_test, 1), len(idx) - 1)
            rng = np.random.default_rng([self.seed, zlib.crc32(alphabet.encode())])
            for j in rng.permutation(len(idx))[:n_test]:
                out[idx[j]] = "test"
        return out
