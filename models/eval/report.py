"""Evaluation results as text: one run's tables (:func:`format_tables`, :func:`format_headline`) and
several runs side by side (:func:`format_comparison`), as console or Markdown tables.

Comparing runs: :func:`run_info` reads what a saved evaluation says about itself (dataset, split,
K, seed, episodes, step, headline bound); :func:`comparison_problems` says why two cannot be
compared (another dataset, split or K). Differences between runs are *paired* (the standard error
of per-episode differences) when both runs scored the same episodes — the same dataset, split,
seed and episode count, with per-episode values saved — and *unpaired* (√(s₁² + s₂²)) otherwise;
the tables say which.

A saved evaluation is checked before it is compared (:func:`check_saved_evaluation`): every field
compare reads must have its type (a number where a number is read, an int where a count is), an NLL
or its standard error must be a finite number ≥ 0 (every family's likelihood is a Bernoulli one over
pixels in [0, 1], so −log p(x) ≥ 0), an accuracy must lie in [0, 1], an x value (n, C) must appear once
in its table, and a row that keeps its per-episode values must agree with them (their mean is its
NLL, their standard error its s.e.). What cannot be detected: a headline bound edited to another
plausible number (it has no per-episode values to check it against), or a whole row rewritten
consistently.

The classification benchmark across runs (:func:`classification_table`): one table, a row per
(run, method) and the no-training baselines' rows first (pixels, the modified Hausdorff distance at the
model's size and on the originals), a column per task (between alphabets, then within one, then Lake's
runs), as console or Markdown text and as tidy CSV rows (:func:`classification_csv`).
The seed papers' numbers (:mod:`varmem.models.eval.seeds`) appear beside ours where a row matches,
labelled as theirs. Saved evaluations of the older layout (no "version" field: version 1) load; a table
they lack is named in a note.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from varmem.episodes.errors import DataError
from varmem.models.eval import seeds as seed_papers
from varmem.models.eval.capabilities import BASELINES, HAUSDORFF, HAUSDORFF_NATIVE, LABELS, LIKELIHOOD, PIXEL
from varmem.models.eval.classification import Task, parse_task_key
from varmem.models.eval.conditioning import columns as conditioning_columns
from varmem.models.eval.nll_tables import OPTIMUM_NOTE
from varmem.models.eval.protocol import RESULT_VERSION

FLAG = "†"  # a row below its optimum
# the run column of a baseline's row in the comparison (its method column: the result's label, e.g. with the size)
BASELINE_RUNS = {PIXEL: "pixels", HAUSDORFF: "Hausdorff", HAUSDORFF_NATIVE: "Hausdorff (originals)"}
# Lake et al.'s published error (%) of the modified Hausdorff nearest neighbour on their 20 runs (105×105)
LAKE_HAUSDORFF_ERROR = 38.8
# keys of a headline result that are not the family's objective terms
HEADLINE_BOOKKEEPING = ("nll_bound", "nll_bound_stderr", "nll_per_episode", "objective_nll_bound", "accuracy", "accuracy_stderr", "seed",
                        "samples", "objective_samples", "episodes", "step")
TERM_LABELS = {"reconstruction": "−E log p(x|...) (reconstruction)", "kl_address": "KL(q(a|x) || p(a))",
               "kl_latent": "KL(q(z|...) || p(z|...))"}


def _f(v: float | None, spec: str = ".2f") -> str:
    """``v`` formatted; "—" when there is no value (None); inf, -inf and nan written as such."""
    if v is None:
        return "—"
    return format(round(v, int(spec.split(".")[1][:-1])) + 0.0, spec)  # + 0.0: no "-0.000" for a rounded-away negative


def _acc(r: dict[str, Any] | None) -> str:
    if not r:
        return "—"
    return f"{100 * r['accuracy']:6.2f} ± {_f(None if r['ci95'] is None else 100 * r['ci95'])} %"


def dataset_label(info: dict[str, Any] | None) -> str:
    """``strokes26 (strokes)`` from a result's "dataset" field."""
    if not info:
        return "unknown dataset"
    return f"{info.get('name', '?')} ({info['source']})" if info.get("source") else str(info.get("name", "?"))


def optimum_footnote(rows: Sequence[dict[str, Any]]) -> str | None:
    """The note under a classes table with rows below their optimum, naming them."""
    flagged = [r for r in rows if r.get("beats_optimum")]
    if not flagged:
        return None
    within = ", ".join(f"C={r['classes']} ({_f(r['gap'], '+.2f')} ± {_f(r.get('gap_stderr'))})" for r in flagged)
    return f"{FLAG} {within}: below its optimum; {OPTIMUM_NOTE}."


def format_headline(result: dict[str, Any], family: str = "") -> str:
    """The headline of ``varmem eval``: run, step, episodes, the K-sample bound, the family's terms, accuracy."""
    ep = result["episode"]
    shape = f"{ep['ways']}-way, {ep['shots']} shots, {ep['targets']} targets" + (
        f", {ep['distractors']} distractor classes" if ep["distractors"] else "") + (
        ", targets from memory" if ep["targets_from_memory"] else "")
    out = [f"{result['run_dir']} at step {result['step']} ({result['checkpoint'].rsplit('/', 1)[-1]})",
           f"  {result['episodes']} episodes of {dataset_label(result.get('dataset'))}/{result['split']} ({shape}), "
           f"seed {result['seed']}"]
    if "nll_bound" in result:
        out.append(f"  NLL bound (K={result['samples']})       {result['nll_bound']:10.3f} ± {result['nll_bound_stderr']:.3f} nats")
    if "objective_nll_bound" in result:
        out.append(f"  NLL bound (K={result['objective_samples']}, objective)  {result['objective_nll_bound']:10.3f} nats")
    for key, value in result.items():  # the family's objective terms, by name
        if key in HEADLINE_BOOKKEEPING or not isinstance(value, float):
            continue
        value = -value if key == "reconstruction" else value
        out.append(f"    {TERM_LABELS.get(key, key):<28} {value:10.3f}")
    if "accuracy" in result:
        out.append(f"  few-shot accuracy ({family or 'the family'}'s classifier) {100 * result['accuracy']:9.2f} ± "
                   f"{100 * result['accuracy_stderr']:.2f} %")
    return "\n".join(out)


def format_tables(result: dict[str, Any]) -> str:
    """The protocol's results as console tables."""
    out: list[str] = []
    K, E = result.get("samples"), result.get("episodes")
    where = f"{dataset_label(result.get('dataset'))}, split {result.get('split')}"
    rows = result.get("nll_vs_examples")
    if rows is not None:
        out.append(f"NLL bound vs examples of one class in memory (K={K}, the same {E} episodes' targets in every row, "
                   f"{where})")
        first = rows[0]["examples"] if rows else 1
        out.append(f"  {'examples':>8}  {'NLL':>9}  {'± s.e.':>7}  {f'vs n={first}':>8}  {'± s.e.':>7}  {'KL(a)':>7}  {'KL(z)':>7}")
        for r in rows:
            out.append(f"  {r['examples']:>8}  {_f(r['nll']):>9}  {_f(r['stderr']):>7}  {_f(r.get('change'), '+.2f'):>8}  "
                       f"{_f(r.get('change_stderr')):>7}  {_f(r['kl_address'], '.3f'):>7}  {_f(r['kl_latent']):>7}")
    rows = result.get("nll_vs_classes")
    if rows is not None:
        out.append(f"NLL bound vs classes in memory ({result.get('examples_per_class')} examples per class, K={K}, {where})")
        out.append(f"  {'classes':>7}  {'|M|':>6}  {'NLL':>9}  {'± s.e.':>7}  {'optimum':>9}  {'gap':>7}  {'± s.e.':>7}  {'KL(a)':>7}")
        for r in rows:
            out.append(f"  {r['classes']:>7}  {r['memory_size']:>6}  {_f(r['nll']):>9}  {_f(r['stderr']):>7}  "
                       f"{_f(r['optimum']):>9}  {_f(r['nll'] - r['optimum'], '+.2f'):>7}  {_f(r.get('gap_stderr')):>7}  "
                       f"{_f(r['kl_address'], '.3f'):>7}" + (f"  {FLAG}" if r.get("beats_optimum") else ""))
        out.append("  optimum: a perfect model of C disjoint classes on the row's targets: "
                   "−log p(x | its own class's examples) + log C")
        note = optimum_footnote(rows)
        if note:
            out.append(f"  {note}")
    rows = result.get("nll_conditioning")
    if rows is not None:
        out.extend(format_conditioning(result))
    cls = result.get("classification")
    if cls is not None:
        out.extend(format_classification(result))
    lake = result.get("lake_runs")
    if lake is not None:
        out.append(f"Lake's one-shot runs ({lake['runs']} runs, {'/'.join(map(str, lake['ways']))}-way 1-shot, {lake['dir']})")
        for m, entry in lake.items():
            if isinstance(entry, dict) and "accuracy" in entry:
                out.append(f"  {method_title(m, entry):<28} {_acc(entry)}   error {100 * (1 - entry['accuracy']):.2f}%")
        if any(isinstance(lake.get(m), dict) for m in (HAUSDORFF, HAUSDORFF_NATIVE)):
            out.append(f"  (Lake et al. 2015, theirs: {LAKE_HAUSDORFF_ERROR}% error for the modified Hausdorff distance on "
                       "the 105×105 originals, 4.5% for people)")
    if result.get("skipped"):
        out.append("Skipped (the model's capabilities or the split do not allow them):")
    for line in result.get("skipped") or []:
        out.append(f"  {line}")
    if result.get("pictures"):
        out.append("Pictures:")
        out.extend(f"  {p}" for p in result["pictures"])
    return "\n".join(out)


def method_title(method: str, entry: dict[str, Any] | None = None, samples: int | None = None) -> str:
    """A method's printed name: the label its result carries, else the benchmark's (``LABELS``)."""
    label = (entry or {}).get("label") or LABELS.get(method, method)
    if method == LIKELIHOOD and samples:
        label += f" (K={samples})"
    return label


def task_short(task: Task) -> str:
    """``5w1s`` / ``20w5s within``: a column header."""
    return f"{task.ways}w{task.shots}s" + (" within" if task.alphabet == "within" else "")


def result_methods(result: dict[str, Any]) -> list[str]:
    """The methods of a result's classification (and Lake) entries, in its "methods" order, the baselines
    last (pixel, hausdorff, hausdorff_native)."""
    found = [m for entry in (result.get("classification") or {}).values() if isinstance(entry, dict) for m in entry]
    found += [m for m, v in (result.get("lake_runs") or {}).items() if isinstance(v, dict) and "accuracy" in v]
    order = [*(result.get("methods") or []), *found]
    out = [m for m in dict.fromkeys(order) if m in found and m not in BASELINES]
    return out + [m for m in BASELINES if m in found]


def _episodes_note(result: dict[str, Any]) -> str:
    n_q, n_l = result.get("classification_episodes"), result.get("likelihood_episodes")
    if n_l in (None, n_q):
        return f"{n_q} episodes per task"
    return f"{n_q} episodes per task, {n_l} by likelihood (K={result.get('likelihood_samples')})"


def format_classification(result: dict[str, Any]) -> list[str]:
    """The classification benchmark of one run: a row per task, a column per method, then the seeds'
    numbers for the run's family (labelled as theirs)."""
    cls = result.get("classification") or {}
    methods = result_methods({"classification": cls, "methods": result.get("methods")})
    out = [f"Few-shot classification ({_episodes_note(result)}, one query per class, accuracy ± 95% CI; "
           "the same seeded episodes for every model and method)"]
    titles = [method_title(m, next((e[m] for e in cls.values() if m in e), None), result.get("likelihood_samples"))
              for m in methods]
    header = ["task", *titles]
    rows = []
    for key, entry in cls.items():
        task = parse_task_key(key)
        rows.append([task.name if task else key, *(_acc(entry.get(m)) for m in methods)])
    out += _console(header, rows)
    if not cls:
        out.append("  (no task ran: see Skipped)")
    family = result.get("model")
    for seed in seed_papers.accuracy_seeds(family):
        shown = ", ".join(f"{w}w{s}s {v:.1f}" for (w, s), v in seed.accuracy.items())
        out.append(f"  {seed_papers.seed_label(seed)}, by {seed.method_label or method_title(seed.method)}: {shown} %")
    if seed_papers.accuracy_seeds(family):
        out.append(f"  ({seed_papers.SEED_NOTE})")
    return out


def format_conditioning(result: dict[str, Any]) -> list[str]:
    """The talk's table of one run: a row per n, a column per C_test (NLL ± s.e.), then the seeds'
    numbers for the run's family in columns of their own, footnoted."""
    rows = result.get("nll_conditioning") or []
    classes, ns, by = conditioning_columns(rows)
    where = f"{dataset_label(result.get('dataset'))}, split {result.get('split')}"
    out = [f"NLL bound vs conditioning examples, C_test classes in the set (the talk's table; K={result.get('samples')}, "
           f"{result.get('episodes')} episodes per column, {where})"]
    seeds = [s for s in seed_papers.nll_seeds(result.get("model")) if any(n in s.nll for n in ns)]
    header = ["n", *(f"C_test={c}" for c in classes), *(f"seed{_sup(i + 1)} C={s.classes}" for i, s in enumerate(seeds))]
    table = []
    for n in ns:
        cells = [str(n)]
        for c in classes:
            r = by.get((c, n))
            cells.append("—" if r is None else f"{_f(r['nll'])} ± {_f(r['stderr'])}")
        cells += [_f(s.nll.get(n), ".1f") for s in seeds]
        table.append(cells)
    out += _console(header, table)
    rule = (result.get("conditioning") or {}).get("rule")
    if rule:
        out.append(f"  {rule}")
    for i, s in enumerate(seeds):
        out.append(f"  {_sup(i + 1)} {seed_papers.seed_label(s)}" + (f" ({s.note})" if s.note else ""))
    if seeds:
        out.append(f"  ({seed_papers.SEED_NOTE})")
    return out


def _sup(i: int) -> str:
    return "".join("⁰¹²³⁴⁵⁶⁷⁸⁹"[int(d)] for d in str(i))


def _console(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a right-aligned console table (first column left-aligned), indented by two."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in [header, *rows]]


# --- a saved evaluation, checked ---------------------------------------------------------------------


class _Checker:
    """Type and range checks of a saved evaluation's fields; DataError naming the file and the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, what: str, value: Any) -> None:
        from varmem.typed import shown

        raise DataError(f"{self.source}: {where} must be {what}, got {shown(value)}: not as `varmem eval --save` "
                        "writes it (edited or damaged?); evaluate the run again")

    def number(self, node: dict, key: str, where: str, *, minimum: float | None = None, maximum: float | None = None,
               optional: bool = True) -> float | None:
        value = node.get(key)
        if value is None and optional:
            return None
        bounds = " ≥ 0" if minimum == 0 and maximum is None else f" in [{minimum:g}, {maximum:g}]" if maximum is not None else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{where}{key}", f"a finite number{bounds}", value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.fail(f"{where}{key}", f"a finite number{bounds}", value)
        return float(value)

    def count(self, node: dict, key: str, where: str, *, minimum: int = 0, optional: bool = True) -> int | None:
        value = node.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(f"{where}{key}", f"an integer ≥ {minimum}", value)
        return value

    def kind(self, node: dict, key: str, where: str, types: tuple[type, ...], what: str) -> Any:
        value = node.get(key)
        if value is not None and not isinstance(value, types):
            self.fail(f"{where}{key}", what, value)
        return value

    def described(self, node: dict, where: str) -> None:
        """What an evaluation says it ran on: dataset, split, K, seed, episodes (top level or protocol)."""
        dataset = self.kind(node, "dataset", where, (dict,), "a mapping (name, source, fingerprint)")
        for key in ("name", "source", "fingerprint", "dir"):
            if dataset is not None:
                self.kind(dataset, key, f"{where}dataset.", (str,), "a string")
        self.kind(node, "split", where, (str,), "a split name (a string)")
        self.count(node, "samples", where, minimum=1)
        self.count(node, "episodes", where, minimum=1)
        self.count(node, "seed", where)

    def table(self, protocol: dict, table: str, key: str) -> None:
        rows = self.kind(protocol, f"nll_vs_{table}", "protocol.", (list,), "a list of rows")
        seen: set[int] = set()
        for i, row in enumerate(rows or []):
            where = f"protocol.nll_vs_{table}[{i}]"
            if not isinstance(row, dict):
                self.fail(where, "a mapping (a table row)", row)
            x = self.count(row, key, f"{where}.", minimum=1, optional=False)
            if x in seen:
                self.fail(f"{where}.{key}", "unique in its table (another row has it)", x)
            seen.add(x)
            nll = self.number(row, "nll", f"{where}.", minimum=0, optional=False)
            if "stderr" not in row:
                raise DataError(f"{self.source}: {where} has no stderr (a number ≥ 0, or null for one episode): not as "
                                "`varmem eval --save` writes it (edited or damaged?); evaluate the run again")
            stderr = self.number(row, "stderr", f"{where}.", minimum=0)
            for name in ("change", "gap"):
                self.number(row, name, f"{where}.")
            for name in ("change_stderr", "gap_stderr"):
                self.number(row, name, f"{where}.", minimum=0)
            if table == "classes":
                self.number(row, "optimum", f"{where}.", minimum=0, optional=False)
                self.kind(row, "beats_optimum", f"{where}.", (bool,), "true or false")
            self.per_episode(row, where, nll, stderr)

    def per_episode(self, row: dict, where: str, nll: float, stderr: float | None, *, nll_key: str = "nll",
                    stderr_key: str = "stderr") -> None:
        """A row's (or the headline's: ``where`` "", ``nll_key`` "nll_bound") per-episode values: finite
        numbers whose mean is its NLL and whose s.e. is its stderr."""
        at = f"{where}." if where else ""
        values = self.kind(row, "nll_per_episode", at, (list,), "a list of numbers")
        if values is None:
            return
        for j, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self.fail(f"{at}nll_per_episode[{j}]", "a finite number", v)
        episodes = row.get("episodes")
        if not values or (isinstance(episodes, int) and not isinstance(episodes, bool) and episodes != len(values)):
            self.fail(f"{at}nll_per_episode", f"{episodes} values (the {'row' if where else 'bound'}'s episodes)", values)
        mean = math.fsum(values) / len(values)
        if not math.isclose(mean, nll, rel_tol=1e-5, abs_tol=1e-3):
            self.fail(f"{at}{nll_key}", f"the mean of its nll_per_episode ({mean:.4f})", nll)
        if stderr is not None and len(values) > 1:
            se = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
            if not math.isclose(se, stderr, rel_tol=1e-3, abs_tol=1e-3):
                self.fail(f"{at}{stderr_key}", f"the standard error of its nll_per_episode ({se:.4f})", stderr)

    def classification(self, protocol: dict) -> None:
        tasks = self.kind(protocol, "classification", "protocol.", (dict,), "a mapping of tasks")
        for task, entry in (tasks or {}).items():
            where = f"protocol.classification.{task}"
            if not isinstance(entry, dict):
                self.fail(where, "a mapping of methods", entry)
            for method, result in entry.items():
                self.accuracy(result, f"{where}.{method}")
        lake = self.kind(protocol, "lake_runs", "protocol.", (dict,), "a mapping (dir, runs, methods)")
        for method, result in (lake or {}).items():
            if method not in ("dir", "runs", "ways"):
                self.accuracy(result, f"protocol.lake_runs.{method}")

    def accuracy(self, result: Any, where: str) -> None:
        if not isinstance(result, dict):
            self.fail(where, "a mapping (accuracy, ci95)", result)
        self.number(result, "accuracy", f"{where}.", minimum=0, maximum=1, optional=False)
        self.number(result, "ci95", f"{where}.", minimum=0)
        self.count(result, "episodes", f"{where}.", minimum=1)
        self.kind(result, "label", f"{where}.", (str,), "a string")

    def conditioning(self, protocol: dict) -> None:
        """The talk's table: rows with classes ≥ 1 and examples ≥ 0, each (C, n) once, NLLs as in :meth:`table`."""
        rows = self.kind(protocol, "nll_conditioning", "protocol.", (list,), "a list of rows")
        seen: set[tuple[int, int]] = set()
        for i, row in enumerate(rows or []):
            where = f"protocol.nll_conditioning[{i}]"
            if not isinstance(row, dict):
                self.fail(where, "a mapping (a table row)", row)
            key = (self.count(row, "classes", f"{where}.", minimum=1, optional=False),
                   self.count(row, "examples", f"{where}.", minimum=0, optional=False))
            if key in seen:
                self.fail(f"{where}.examples", f"unique in its C_test={key[0]} column (another row has it)", key[1])
            seen.add(key)
            nll = self.number(row, "nll", f"{where}.", minimum=0, optional=False)
            stderr = self.number(row, "stderr", f"{where}.", minimum=0)
            self.number(row, "change", f"{where}.")
            self.number(row, "change_stderr", f"{where}.", minimum=0)
            self.per_episode(row, where, nll, stderr)


def check_saved_evaluation(saved: Any, source: str) -> dict[str, Any]:
    """``saved`` (a file written by ``varmem eval --save``) if every field compare reads has its type and
    range (see the module docstring); DataError naming ``source`` and the field otherwise. Returns its
    "protocol" part."""
    check = _Checker(source)
    protocol = saved.get("protocol") if isinstance(saved, dict) else None
    if not isinstance(protocol, dict):
        raise DataError(f"{source}: no \"protocol\" field: not the output of `varmem eval --save` / `--json`")
    check.described(saved, "")
    check.described(protocol, "protocol.")
    check.count(saved, "step", "")
    nll = check.number(saved, "nll_bound", "", minimum=0)
    se = check.number(saved, "nll_bound_stderr", "", minimum=0)
    if nll is not None:
        check.per_episode(saved, "", nll, se, nll_key="nll_bound", stderr_key="nll_bound_stderr")
    check.table(protocol, "examples", "examples")
    check.table(protocol, "classes", "classes")
    check.conditioning(protocol)
    check.classification(protocol)
    version = protocol.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        check.fail("protocol.version", "an integer ≥ 1", version)
    if version > RESULT_VERSION:
        raise DataError(f"{source}: written by a newer varmem (evaluation result version {version}; this one reads up to "
                        f"{RESULT_VERSION}): update varmem to compare it")
    return protocol


# --- several runs -------------------------------------------------------------------------------------


def run_info(label: str, saved: dict[str, Any]) -> dict[str, Any]:
    """What a saved evaluation (``varmem eval --save``) says about itself; None where it does not say."""
    protocol = saved.get("protocol") or {}
    methods = protocol.get("methods")
    if isinstance(methods, list) and methods and set(methods) <= set(BASELINES):
        # only the no-training baselines were asked for (`varmem eval --methods pixel,hausdorff --tables none`): the
        # file's headline bound is the loaded model's on a token episode count, not a result to put beside the runs
        saved = {k: v for k, v in saved.items() if k not in ("step", "nll_bound", "nll_bound_stderr", "nll_per_episode")}
    return {"label": label, "dataset": protocol.get("dataset") or saved.get("dataset"),
            "split": protocol.get("split", saved.get("split")), "samples": protocol.get("samples", saved.get("samples")),
            "seed": protocol.get("seed", saved.get("seed")), "episodes": protocol.get("episodes"),
            "step": saved.get("step"), "nll_bound": saved.get("nll_bound"), "nll_bound_stderr": saved.get("nll_bound_stderr"),
            "bound_episodes": saved.get("episodes"), "episode": saved.get("episode"),
            "nll_per_episode": saved.get("nll_per_episode")}


def _dataset_key(info: dict[str, Any]) -> Any:
    d = info.get("dataset")
    if not d:
        return None
    return d.get("fingerprint") or (d.get("name"), d.get("source"))


def comparison_problems(infos: Sequence[dict[str, Any]]) -> list[str]:
    """Why ``infos`` cannot be compared: a line per field (dataset, split, K) that differs or is unknown."""
    problems = []
    for what, key in (("dataset", _dataset_key), ("split", lambda i: i.get("split")), ("K", lambda i: i.get("samples"))):
        values = [key(i) for i in infos]
        if any(v is None for v in values) or len(set(map(repr, values))) > 1:
            shown = ", ".join(f"{i['label']}: {dataset_label(i['dataset']) if what == 'dataset' and i['dataset'] else key(i) if key(i) is not None else 'unknown'}"
                              for i in infos)
            problems.append(f"{what} differs or is unknown ({shown})")
    return problems


def same_episodes(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' tables scored the same episodes (same dataset, split, seed and episode count)."""
    return (_dataset_key(a) is not None and _dataset_key(a) == _dataset_key(b)
            and all(a.get(k) is not None and a.get(k) == b.get(k) for k in ("split", "seed", "episodes")))


def _difference(ra: dict[str, Any] | None, rb: dict[str, Any] | None, paired: bool) -> str:
    """``rb − ra`` of one table row: ``+13.91 ± 0.71`` (paired over per-episode values, or unpaired)."""
    if ra is None or rb is None:
        return "—"
    if paired:
        xa, xb = ra["nll_per_episode"], rb["nll_per_episode"]
        d = [b - a for a, b in zip(xa, xb)]
        mean = sum(d) / len(d)
        se = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d)) if len(d) > 1 else None
        return f"{_f(mean, '+.2f')} ± {_f(se)}"
    se = None if ra.get("stderr") is None or rb.get("stderr") is None else math.hypot(ra["stderr"], rb["stderr"])
    return f"{_f(rb['nll'] - ra['nll'], '+.2f')} ± {_f(se)}"


def _pairable(rows_a: dict, rows_b: dict) -> bool:
    common = set(rows_a) & set(rows_b)
    return bool(common) and all(
        isinstance(rows_a[x].get("nll_per_episode"), list) and isinstance(rows_b[x].get("nll_per_episode"), list)
        and len(rows_a[x]["nll_per_episode"]) == len(rows_b[x]["nll_per_episode"]) for x in common)


def same_bound_episodes(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' headline bounds scored the same episodes, one value per episode in both files
    (same dataset, split, seed, episode shape and count; ``varmem eval`` writes ``nll_per_episode``)."""
    xa, xb = a.get("nll_per_episode"), b.get("nll_per_episode")
    return (_dataset_key(a) is not None and _dataset_key(a) == _dataset_key(b)
            and all(a.get(k) is not None and a.get(k) == b.get(k) for k in ("split", "seed", "episode", "bound_episodes"))
            and isinstance(xa, list) and isinstance(xb, list) and len(xa) == len(xb) == a["bound_episodes"])


def _runs_block(infos: Sequence[dict[str, Any]]) -> tuple[str, str, list[str], list[list[str]]]:
    ref = next((i for i in infos if i["nll_bound"] is not None), infos[0])  # a baselines-only file has no bound
    paired = [i is not ref and same_bound_episodes(ref, i) for i in infos]
    others = [p for i, p in zip(infos, paired) if i is not ref and i["nll_bound"] is not None]
    how = "paired" if others and all(others) else "unpaired" if not any(others) else "paired where marked"
    header = ["run", "dataset", "split", "step", "K", "seed", "episodes", "headline NLL bound", f"vs {ref['label']} ({how})"]
    rows = []
    for i, pair in zip(infos, paired):
        bound = "—" if i["nll_bound"] is None else f"{_f(i['nll_bound'])} ± {_f(i['nll_bound_stderr'])}"
        diff = "—"
        if pair:
            diff = _difference({"nll_per_episode": ref["nll_per_episode"]}, {"nll_per_episode": i["nll_per_episode"]}, True)
            diff += " (paired)" if how == "paired where marked" else ""
        elif i is not ref and i["nll_bound"] is not None and ref["nll_bound"] is not None:
            se = (None if i["nll_bound_stderr"] is None or ref["nll_bound_stderr"] is None
                  else math.hypot(i["nll_bound_stderr"], ref["nll_bound_stderr"]))
            diff = f"{_f(i['nll_bound'] - ref['nll_bound'], '+.2f')} ± {_f(se)}"
        step = "—" if i["step"] is None else str(i["step"])
        rows.append([i["label"], dataset_label(i["dataset"]), str(i["split"]), step, str(i["samples"]),
                     str(i["seed"]), str(i["episodes"]), bound, diff])
    return "Runs (headline bound over each run's eval episodes; paired where they are the same)", "run", header, rows


def format_comparison(results: Sequence[tuple[str, dict[str, Any]]], markdown: bool = False,
                      infos: Sequence[dict[str, Any]] | None = None) -> str:
    """Several runs' protocol results side by side: NLL vs examples (each run's change vs its first
    row, paired within the run) and NLL vs classes (with each run's own optimum), one column per run,
    then each run's difference from the first (paired or unpaired, as the header says); the talk's
    table (:func:`conditioning_table`) and the classification benchmark (:func:`classification_table`),
    a row per run (and C_test, or method), with the seeds' numbers beside; a note per table a file
    lacks. ``infos`` (from :func:`run_info`) adds the table of runs. Console tables or (``markdown``)
    Markdown tables under bold titles."""
    labels = [label for label, _ in results]
    blocks: list[tuple[str, str, list[str], list[list[str]]]] = []  # (title, first column, header, rows)
    if infos:
        blocks.append(_runs_block(infos))
    notes: list[str] = []
    for table, key, title in (("examples", "examples", "NLL bound vs examples of one class in memory "
                                                       "(nats ± s.e. (change vs the run's first row ± paired s.e.))"),
                              ("classes", "classes", "NLL bound vs classes in memory (nats ± s.e. [optimum])")):
        by_all = [{r[key]: r for r in (res.get(f"nll_vs_{table}") or [])} for _, res in results]
        have = [k for k, rows_ in enumerate(by_all) if rows_]  # the files with this table (not a baselines-only one)
        if not have:
            continue
        by, names = [by_all[k] for k in have], [labels[k] for k in have]
        xs = sorted({x for rows in by for x in rows})
        paired = [infos is not None and same_episodes(infos[have[0]], infos[k]) and _pairable(by[0], by_all[k])
                  for k in have]
        header = [key, *names] + [f"{names[k]} − {names[0]} ({'paired' if paired[k] else 'unpaired'})"
                                  for k in range(1, len(names))]
        rows = []
        for x in xs:
            row = [str(x)]
            for found in by:
                r = found.get(x)
                text = "—" if r is None else f"{_f(r['nll'])} ± {_f(r['stderr'], '.1f')}"
                if r is not None and table == "examples" and x != min(found) and r.get("change") is not None:
                    text += f" ({_f(r['change'], '+.2f')} ± {_f(r.get('change_stderr'))})"
                if r is not None and table == "classes":
                    text += f" [{_f(r['optimum'], '.1f')}]" + (FLAG if r.get("beats_optimum") else "")
                row.append(text)
            row += [_difference(by[0].get(x), by[k].get(x), paired[k]) for k in range(1, len(by))]
            rows.append(row)
        blocks.append((title, key, header, rows))
        if table == "classes" and any(r.get("beats_optimum") for rows_ in by for r in rows_.values()):
            notes.append(f"{FLAG} below its optimum; {OPTIMUM_NOTE}.")
    if len(labels) > 1:
        notes.append("paired: the same episodes' targets in both runs (same dataset, split, seed and episodes), s.e. over "
                     "per-episode differences; unpaired: s.e. √(s₁² + s₂²) — the episodes or seeds differ, or the files "
                     "hold no per-episode values.")
    marks: list[Any] = []  # the seeds' rows shown, numbered across both tables
    conditioning = conditioning_table(results, marks)
    if conditioning is not None:
        title, header, rows, footnotes = conditioning
        blocks.append((title, "run", header, rows))
        notes.extend(footnotes)
    classification = classification_table(results, marks)
    if classification is not None:
        title, header, rows, footnotes, _ = classification
        blocks.append((title, "run", header, rows))
        notes.extend(footnotes)
    notes.extend(seed_footnotes(marks))
    notes.extend(missing_tables(results))
    out: list[str] = []
    for title, key, header, rows in blocks:
        if markdown:
            out += ["", f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(row) + " |" for row in rows]
            continue
        widths = [max(len(c) for c in col) for col in zip(header, *rows)]
        out.append(title)
        for row in [header, *rows]:
            out.append("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))
    for note in notes:
        out += ["", note] if markdown or note is notes[0] else [note]
    return "\n".join(out).strip("\n")


# --- the talk's table and the classification benchmark across runs --------------------------------------

LAKE = "lake_runs"


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    return f"{100 * entry['accuracy']:.1f} ± {_f(None if entry.get('ci95') is None else 100 * entry['ci95'], '.1f')}"


def compare_tasks(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """The task keys of ``results``' classification, between alphabets first, then within, then Lake's runs."""
    keys = list(dict.fromkeys(k for _, res in results for k in (res.get("classification") or {})))
    tasks = [k for k in keys if parse_task_key(k) is not None]
    tasks.sort(key=lambda k: parse_task_key(k).alphabet == "within")
    tasks += [k for k in keys if parse_task_key(k) is None]
    if any(res.get(LAKE) for _, res in results):
        tasks.append(LAKE)
    return tasks


def _task_header(key: str) -> str:
    task = parse_task_key(key)
    return "Lake's runs" if key == LAKE else task_short(task) if task else key


def _entry(res: dict[str, Any], key: str, method: str) -> dict[str, Any] | None:
    node = res.get(LAKE) if key == LAKE else (res.get("classification") or {}).get(key)
    value = (node or {}).get(method)
    return value if isinstance(value, dict) else None


def seed_footnotes(marks: Sequence[Any]) -> list[str]:
    """The footnotes of the seeds' rows numbered in ``marks`` (``¹ seed: ... [source; protocol]``) and the note
    that they are the papers' numbers, not ours."""
    notes = [f"{_sup(i + 1)} {seed_papers.seed_label(s)}" + (f" ({s.note})" if s.note else "") for i, s in enumerate(marks)]
    if marks:
        notes.append(seed_papers.SEED_NOTE + "; the seeds' classification tasks are between alphabets.")
    return notes


def _mark(marks: list[Any], seed: Any) -> str:
    if seed not in marks:
        marks.append(seed)
    return _sup(marks.index(seed) + 1)


def classification_table(results: Sequence[tuple[str, dict[str, Any]]], marks: list[Any] | None = None):
    """The benchmark across runs: (title, header, rows, footnotes, records) or None when no run has one.

    Rows: the no-training baselines first, each (pixels, the modified Hausdorff distance, on the originals)
    in one row when every run's numbers for it agree, as they do on the same dataset, split, seed and
    episodes (else a row per group of runs), then per run a row per
    method, each followed by the seed papers' rows for its family and method (``seed¹``: numbered in
    ``marks``, footnoted by :func:`seed_footnotes`). Columns: the tasks, between alphabets, within, Lake's
    runs. ``records``: one dict per cell for :func:`classification_csv` (``kind`` "baseline", "ours" or
    "seed"). ``footnotes``: the table's own notes."""
    tasks = compare_tasks(results)
    if not tasks:
        return None
    header = ["run", "method", *(_task_header(k) for k in tasks)]
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    marks = [] if marks is None else marks

    def record(kind: str, run: str, family: str | None, method: str, label: str, key: str, entry: dict | None,
               extra: dict[str, Any] | None = None) -> None:
        if not entry:
            return
        task = parse_task_key(key)
        wilson = entry.get("wilson95") or [None, None]
        records.append({"kind": kind, "run": run, "family": family, "method": method, "label": label,
                        "task": key, "ways": task.ways if task else 20, "shots": task.shots if task else 1,
                        "alphabet": task.alphabet if task else "within", "accuracy": entry["accuracy"],
                        "ci95": entry.get("ci95"), "wilson95_low": wilson[0], "wilson95_high": wilson[1],
                        "episodes": entry.get("episodes"), "targets": entry.get("targets"),
                        "samples": entry.get("samples"), **(extra or {})})

    for base in BASELINES:
        groups: dict[tuple, list[str]] = {}
        first_of: dict[tuple, dict[str, Any]] = {}
        for label, res in results:
            cells = tuple(_cell(_entry(res, k, base)) for k in tasks)
            if any(c != "—" for c in cells):
                groups.setdefault(cells, []).append(label)
                first_of.setdefault(cells, res)
        for cells, labels in groups.items():
            name = BASELINE_RUNS[base]
            run = name if len(groups) == 1 else f"{name} [{', '.join(labels)}]"
            title = method_title(base, next((e for k in tasks if (e := _entry(first_of[cells], k, base))), None))
            rows.append([run, title, *cells])
            for k in tasks:
                record("baseline", run, None, base, title, k, _entry(first_of[cells], k, base))
    for label, res in results:
        family = res.get("model")
        for m in result_methods(res):
            if m in BASELINES:
                continue
            first = next((e for k in tasks if (e := _entry(res, k, m))), None)
            samples = res.get("likelihood_samples") if m == LIKELIHOOD else None
            title = method_title(m, first, samples)
            rows.append([label, title, *(_cell(_entry(res, k, m)) for k in tasks)])
            for k in tasks:
                record("ours", label, family, m, title, k, _entry(res, k, m))
            for seed in seed_papers.accuracy_seeds(family, m):
                values = []
                for k in tasks:
                    task = parse_task_key(k)
                    values.append(seed.accuracy.get((task.ways, task.shots)) if task and task.alphabet == "between" else None)
                if all(v is None for v in values):  # the seed reports none of these tasks (e.g. within-alphabet only)
                    continue
                mark = _mark(marks, seed)
                for k, value in zip(tasks, values):
                    if value is not None:
                        record("seed", f"seed{mark}", family, m, title, k, {"accuracy": value / 100},
                               {"source": seed.source, "protocol": seed.protocol, "model": seed.model})
                rows.append([f"  seed{mark}", title, *("" if v is None else f"{v:.1f}" for v in values)])
    n = sorted({r["episodes"] for r in records if r["kind"] != "seed" and r["episodes"]})
    title = ("Few-shot classification (% accuracy ± 95% CI; " + (f"{n[0]}–{n[-1]}" if len(n) > 1 else f"{n[0] if n else '?'}")
             + " episodes per cell, each run's count in its CSV; a task's episodes are the same for every model "
             "evaluated with the same dataset, split and seed)")
    return title, header, rows, [], records


CSV_FIELDS = ("kind", "run", "family", "method", "label", "task", "ways", "shots", "alphabet", "accuracy", "ci95",
              "wilson95_low", "wilson95_high", "episodes", "targets", "samples", "model", "source", "protocol")


def classification_csv(records: Sequence[dict[str, Any]]) -> str:
    """Tidy CSV of :func:`classification_table`'s records: one row per (run or seed, method, task)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def conditioning_table(results: Sequence[tuple[str, dict[str, Any]]], marks: list[Any] | None = None):
    """The talk's table across runs: (title, header, rows, notes) or None when no run has it. A row per
    (run, C_test), a column per n; after a run's rows the seeds' rows for its family (numbered in
    ``marks``, footnoted by :func:`seed_footnotes`)."""
    if not any(res.get("nll_conditioning") for _, res in results):
        return None
    ns = sorted({int(r["examples"]) for _, res in results for r in res.get("nll_conditioning") or []})
    header = ["run", "C_test", *(f"n={n}" for n in ns)]
    rows: list[list[str]] = []
    marks = [] if marks is None else marks
    for label, res in results:
        classes, _, by = conditioning_columns(res.get("nll_conditioning") or [])
        for c in classes:
            rows.append([label, str(c), *("—" if (c, n) not in by else f"{_f(by[(c, n)]['nll'])} ± "
                                           f"{_f(by[(c, n)]['stderr'], '.1f')}" for n in ns)])
        for seed in seed_papers.nll_seeds(res.get("model")):
            if not any(n in seed.nll for n in ns):
                continue
            rows.append([f"  seed{_mark(marks, seed)}", str(seed.classes),
                         *("" if n not in seed.nll else f"{seed.nll[n]:.1f}" for n in ns)])
    notes = []
    rule = next(((res.get("conditioning") or {}).get("rule") for _, res in results if res.get("conditioning")), None)
    title = "NLL bound vs conditioning examples n for C_test classes in the set (the talk's table; nats ± s.e.)"
    if rule:
        notes.insert(0, f"The talk's table: {rule}.")
    return title, header, rows, notes


def missing_tables(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """A note per run whose file lacks a table another run has (an older file, or a narrower evaluation)."""
    notes = []
    what = (("nll_conditioning", "the talk's table (NLL vs conditioning examples)", "--tables conditioning"),
            ("classification", "the classification benchmark", "--tasks ..."))
    for key, name, flag in what:
        if not any(res.get(key) for _, res in results):
            continue
        for label, res in results:
            if res.get(key):
                continue
            old = res.get("version", 1) < RESULT_VERSION and key == "nll_conditioning"
            notes.append(f"{label}: {name} is missing from its file: " + (
                f"written by an older `varmem eval` (result version {res.get('version', 1)})" if old
                else "that evaluation did not run it") + f"; `varmem eval RUN {flag} --save FILE` adds it.")
    for label, res in results:
        cls = res.get("classification") or {}
        if cls and res.get("version", 1) < RESULT_VERSION:
            notes.append(f"{label}: an older evaluation file (result version {res.get('version', 1)}): no within-alphabet "
                         "tasks, no cosine or pixel rows; evaluate the run again for them.")
    return notes


CONDITIONING_FIELDS = ("kind", "run", "family", "classes", "examples", "nll", "stderr", "change", "change_stderr",
                       "episodes", "targets", "samples", "model", "source", "protocol")


def conditioning_csv(results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Tidy CSV of the talk's table across runs: a row per (run, C_test, n), then the seeds' rows for the
    runs' families (``kind`` "seed", with their source and protocol)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CONDITIONING_FIELDS, lineterminator="\n")
    writer.writeheader()
    families = []
    for label, res in results:
        for r in res.get("nll_conditioning") or []:
            writer.writerow({"kind": "ours", "run": label, "family": res.get("model") or "",
                             **{k: ("" if r.get(k) is None else r[k]) for k in CONDITIONING_FIELDS[3:12]}})
        if res.get("model") not in families:
            families.append(res.get("model"))
    for family in families:
        for seed in seed_papers.nll_seeds(family):
            for n, v in sorted(seed.nll.items()):
                writer.writerow({"kind": "seed", "run": "", "family": family, "classes": seed.classes, "examples": n,
                                 "nll": v, "model": seed.model, "source": seed.source, "protocol": seed.protocol})
    return buf.getvalue()
