"""The talk's NLL table (Bartunov, "Few-shot generative modelling"; GMN, Bartunov & Vetrov): NLL as the
number n of conditioning examples grows, n = 0, 1, 2, 3, 4, 5, 10, 19, for C_test = 1, 2, 3, 4 classes
in the conditioning set; paired within each C_test column.

The episodes of column C (precisely):

* C classes drawn uniformly from the split (``EpisodeSpec(ways=C, shots=S, targets=1)``, S =
  ⌈n_max / C⌉): S conditioning images of each class and one more image of each class, its target.
* The conditioning *sequence* deals the classes round-robin: position i = 0, 1, 2, … holds class
  (i mod C)'s (⌊i / C⌋ + 1)-th image. Row n conditions on the first n positions, so class k holds
  ⌈(n − k) / C⌉ of them (as even as n allows; ``set_counts`` in each row). For n < C the set misses
  C − n classes.
* Each of the C targets (one unseen image of every class) is scored given the row's set, and the
  row's NLL per episode is their mean: the target's class is each of the C classes once, as in the
  talk's sequences, where the next image comes from one of the C classes and the set holds the
  images before it. For C = 1 this is the VMA paper's Table 1 (``nll_tables.nll_table_examples``)
  with the 0-example row added.
* Paired: every row of a column scores the same episodes' targets with the same importance-sampling
  noise, each row's set a prefix of the next one's; ``change`` is NLL(n) − NLL(the column's first
  row) with its s.e. over per-episode differences. Columns are separate episodes (other class
  counts); C = 1's episodes are those of the NLL-vs-examples table with n_max = 19.
* n = 0 conditions on an empty memory [G, 0, 1, H, W]: only for a model whose ``min_memory_size``
  is 0 (GMN with pseudo-inputs, the Neural Statistician, the VAE); for the others it is skipped with
  the reason (a row with n < min_memory_size never runs).

Rows: ``{"classes", "examples", "memory_size", "set_counts", "nll", "stderr", "change", "change_stderr",
"kl_address", "kl_latent", ["terms"], "episodes", "targets", "samples", "nll_per_episode"}``.
"""
from __future__ import annotations

from typing import Any, Sequence

from varmem.episodes.dataset import Dataset
from varmem.episodes.sampler import EpisodeSampler
from varmem.episodes.spec import EpisodeSpec
from varmem.models.base import Batch
from varmem.models.eval.capabilities import min_memory_size, why_not
from varmem.models.eval.nll_tables import paired_passes, row_fields
from varmem.models.eval.passes import check_positive, open_dataset, spec_problem
from varmem.models.eval.progress import as_progress
from varmem.models.eval.stats import mean_se

# The talk's columns and rows.
DEFAULT_CONDITIONING_EXAMPLES = (0, 1, 2, 3, 4, 5, 10, 19)
DEFAULT_CONDITIONING_CLASSES = (1, 2, 3, 4)
RULE = ("n conditioning examples dealt round-robin over the C_test classes (class k holds ⌈(n − k)/C_test⌉); "
        "targets: one unseen image of each of the C_test classes, the row's NLL their mean; rows of a column "
        "paired (same targets, same noise, nested sets)")


def sequence_positions(classes: int, shots: int, n: int) -> list[int]:
    """Indices into a class-major memory of ``classes`` × ``shots`` images of the first ``n`` positions
    of the round-robin sequence: position i → class i mod C, its (i // C)-th image."""
    if n > classes * shots:
        raise ValueError(f"{n} positions do not fit in {classes} classes × {shots} images")
    return [(i % classes) * shots + i // classes for i in range(n)]


def set_counts(classes: int, n: int) -> list[int]:
    """Images of each class among the first ``n`` positions: ⌈(n − k) / C⌉ for class k."""
    return [max(0, -(-(n - k) // classes)) for k in range(classes)]


def column_spec(split: str, classes: int, examples: Sequence[int], **data: Any) -> EpisodeSpec:
    """The episodes of column C: C classes × (⌈max n / C⌉ conditioning + 1 target) images."""
    shots = max(1, -(-max(examples) // classes))
    return EpisodeSpec(split=split, ways=classes, shots=shots, targets=1, **data)


def rows_that_fit(model, dataset: Dataset, split: str, classes: Sequence[int] = DEFAULT_CONDITIONING_CLASSES,
                  examples: Sequence[int] = DEFAULT_CONDITIONING_EXAMPLES) -> tuple[dict[int, list[int]], list[str]]:
    """({C: the n of ``examples`` the model and the split allow}, a line per skipped row or column saying
    why): n below the model's ``min_memory_size`` (n = 0 for most models) and n whose episodes the
    split cannot supply (⌈n / C⌉ + 1 images of C classes) are skipped."""
    floor = min_memory_size(model)
    empty = why_not(model)["empty_memory"]
    fit: dict[int, list[int]] = {}
    skipped: list[str] = []
    for C in sorted(set(int(c) for c in classes)):
        ok = []
        for n in sorted(set(int(n) for n in examples)):
            if n < floor:
                why = empty if n == 0 and empty else f"the model conditions on at least {floor} entries (min_memory_size)"
                skipped.append(f"NLL vs conditioning examples: C_test={C}, n={n} skipped: {why}")
                continue
            problem = spec_problem(column_spec(split, C, [n]), dataset)
            if problem is None:
                ok.append(n)
            else:
                skipped.append(f"NLL vs conditioning examples: C_test={C}, n={n} skipped: {problem}")
        if ok:
            fit[C] = ok
    return fit, skipped


def nll_table_conditioning(model, dataset: Dataset | str, split: str, *,
                           classes: Sequence[int] = DEFAULT_CONDITIONING_CLASSES,
                           examples: Sequence[int] = DEFAULT_CONDITIONING_EXAMPLES, samples: int = 1000,
                           episodes: int = 100, seed: int = 0, chunk: int = 100, binarize: str = "none",
                           threshold: float = 0.5, exact_address: bool = False, progress=None) -> list[dict[str, Any]]:
    """The talk's table (see the module docstring): a row per (C_test, n) the model and the split
    allow, ``episodes`` episodes per column, the K = ``samples`` importance-sampled bound. Rows the
    model or the split cannot supply are skipped, saying so through ``progress``."""
    dataset = open_dataset(dataset)
    check_positive(samples=samples, episodes=episodes, chunk=chunk)
    say = as_progress(progress)
    fit, skipped = rows_that_fit(model, dataset, split, classes, examples)
    for line in skipped:
        say.say(line)
    rows: list[dict[str, Any]] = []
    for C, ns in fit.items():
        spec = column_spec(split, C, ns, binarize=binarize, threshold=threshold)
        views = [(n, (lambda b, idx=sequence_positions(C, spec.shots, n):
                      Batch(b.memory[:, idx], b.targets, b.memory_labels[:, idx], b.target_labels)), True) for n in ns]
        with say.part(f"NLL vs conditioning examples, C_test={C}, n={','.join(map(str, ns))}", episodes) as done:
            parts = paired_passes(model, EpisodeSampler(dataset, spec, seed), episodes, views, samples=samples,
                                  chunk=chunk, seed=seed, exact_address=exact_address, progress=done)
        first = -parts[ns[0]]["ll"].mean(1)  # [E]
        for n in ns:
            nll_ep = -parts[n]["ll"].mean(1)  # [E]: the mean over the C targets
            change, change_se = mean_se(nll_ep - first)
            rows.append({"classes": C, "examples": n, "memory_size": n, "set_counts": set_counts(C, n),
                         **row_fields(parts[n], samples), "change": change, "change_stderr": change_se,
                         "nll_per_episode": nll_ep.tolist()})
            say.say(f"NLL vs conditioning examples: {row_line(rows[-1], ns[0])}")
    return rows


def row_line(row: dict[str, Any], first: int) -> str:
    """``C_test=2, n= 3: 95.20 nats (-0.84 vs n=0)``."""
    return (f"C_test={row['classes']}, n={row['examples']:>2}: {row['nll']:.2f} nats "
            f"({row['change']:+.2f} vs n={first})")


def columns(rows: Sequence[dict[str, Any]]) -> tuple[list[int], list[int], dict[tuple[int, int], dict[str, Any]]]:
    """(the C_test values, the n values, {(C, n): row}) of a conditioning table's rows."""
    by = {(int(r["classes"]), int(r["examples"])): r for r in rows}
    return sorted({c for c, _ in by}), sorted({n for _, n in by}), by
