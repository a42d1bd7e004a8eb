"""What an evaluation will cost, printed before it starts: decoder evaluations per part.

A *decode* is one (target, importance sample) evaluation of the decoder: the unit that dominates
every likelihood estimate (the encoders run once per image and pass). A part's decodes are
episodes × targets × K (× classes, for classification by likelihood); a table row adds the
objective's few samples (its KL terms). Classification by q(a|x), by a family's own classifier,
by cosine nearest neighbour on embeddings, by pixels and by the modified Hausdorff distance decodes
nothing (one encoder pass per episode, or none); their lines say what they cost instead (the
Hausdorff baseline: a distance between every target's and every support image's ink points, about
10 ms per 20-way 1-shot episode at 26×26 and 0.2-0.4 s at 105×105 on one CPU core).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class PartCost:
    name: str  # "NLL vs examples (n=1,2,3)"
    detail: str  # "100 episodes × 3 rows × 1 target × (K=1000 + 4)"
    decodes: int


def nll_examples_cost(episodes: int, rows: Sequence[int], samples: int, objective_samples: int) -> PartCost:
    """Every row n scores one target per episode with K samples, plus the objective's samples."""
    return PartCost(f"NLL vs examples (n={','.join(map(str, rows))})",
                    f"{episodes} episodes × {len(rows)} rows × 1 target × (K={samples} + {objective_samples})",
                    episodes * len(rows) * (samples + objective_samples))


def nll_classes_cost(episodes: int, rows: Sequence[int], targets: int, samples: int, objective_samples: int) -> PartCost:
    """Row C scores min(C, targets) targets per episode; the optimum scores every target once more,
    with its own class's examples alone."""
    per_episode = targets * samples + sum(min(C, targets) for C in rows) * (samples + objective_samples)
    return PartCost(f"NLL vs classes (C={','.join(map(str, rows))})",
                    f"{episodes} episodes × ({targets} targets for the optimum + {sum(min(C, targets) for C in rows)} "
                    f"over the rows) × K={samples} (+ {objective_samples})",
                    episodes * per_episode)


def nll_conditioning_cost(episodes: int, classes: int, rows: Sequence[int], samples: int,
                          objective_samples: int) -> PartCost:
    """A column of the talk's table: each of its rows (n values) scores C = ``classes`` targets per
    episode with K samples, plus the objective's."""
    return PartCost(f"NLL vs conditioning examples, C_test={classes} (n={','.join(map(str, rows))})",
                    f"{episodes} episodes × {len(rows)} rows × {classes} target{'s' if classes > 1 else ''} × "
                    f"(K={samples} + {objective_samples})",
                    episodes * len(rows) * classes * (samples + objective_samples))


def classification_cost(task: str, method: str, episodes: int, classes: int, targets: int, samples: int,
                        label: str | None = None) -> PartCost:
    """Likelihood: every target scored against every class's support with K samples; every other
    method (q(a|x), a family's classifier, cosine on embeddings, pixels, the modified Hausdorff
    distance) decodes nothing."""
    shown = label or {"q_a": "q(a|x)"}.get(method, method)
    if method == "likelihood":
        return PartCost(f"{task} by likelihood", f"{episodes} episodes × {classes} classes × {targets} targets × K={samples}",
                        episodes * classes * targets * samples)
    if method in ("hausdorff", "hausdorff_native"):
        where = "the originals" if method == "hausdorff_native" else "the episode's images"
        return PartCost(f"{task} by {shown}", f"{episodes} episodes × {targets} targets × every support image, "
                                              f"no model: ink-point distances on {where}", 0)
    what = {"pixel": "no model: pixels only", "cosine": "embedding passes only"}.get(method, "encoder passes only")
    return PartCost(f"{task} by {shown}", f"{episodes} episodes × {targets} targets, {what}", 0)


def bound_cost(episodes: int, targets: int, samples: int | None, objective_samples: int) -> PartCost:
    """The headline bound: every target with K samples (``samples`` None: no likelihood), plus the objective."""
    K = f"(K={samples} + {objective_samples})" if samples else f"K={objective_samples} (the objective)"
    return PartCost("headline NLL bound" if samples else "validation objective", f"{episodes} episodes × {targets} targets × {K}",
                    episodes * targets * ((samples or 0) + objective_samples))


def format_cost(parts: Sequence[PartCost]) -> str:
    """The cost table: a line per part, then the total."""
    total = sum(p.decodes for p in parts)
    name_w = max([len(p.name) for p in parts] + [5])
    detail_w = max([len(p.detail) for p in parts] + [1])
    num_w = max(len(f"{total:,}"), 7)
    lines = ["cost, in decodes (decoder evaluations: targets × K importance samples, + the objective's few for its terms):"]
    for p in parts:
        lines.append(f"  {p.name:<{name_w}}  {p.detail:<{detail_w}}  {p.decodes:>{num_w},}")
    lines.append(f"  {'total':<{name_w}}  {'':<{detail_w}}  {total:>{num_w},} decodes")
    return "\n".join(lines)
