"""The evaluation protocol of a trained few-shot model (Bornschein et al. 2017, §4; Bartunov's talk; the
few-shot classification benchmark): what runs, in what order, at what cost.

``evaluate(model, dataset, split, ...)`` measures, on fixed seeded episodes of ``split``, exactly
the parts that the model's declared capabilities allow (:mod:`varmem.models.eval.capabilities`)
and the split can supply, and records every part it skipped with the reason (``"skipped"``):

* the NLL tables (:mod:`.nll_tables`: NLL vs examples of one class, NLL vs classes beside the
  optimum; :mod:`.conditioning`: the talk's table, NLL vs conditioning examples n = 0..19 for
  C_test = 1..4 classes in the set),
* the classification benchmark (:mod:`.classification`: 5/20-way 1/5-shot between alphabets and
  within one, by q(a|x) or the family's own classifier, likelihood, cosine nearest neighbour on
  the model's embedding, and the baselines that need no model: pixel nearest neighbour, Lake's
  modified Hausdorff distance at the model's size and, given ``hausdorff_data``, on the originals),
* Lake's one-shot runs (:mod:`.lake`), by the same methods,
* pictures (:mod:`.pictures`: one-shot sample grids of Bernoulli means and of binary samples,
  q(a|x)'s top entries; :mod:`.plots`: the NLL tables as plots).

Before it starts it prints what it will cost (:mod:`.cost`: decodes per part and in total); while
it runs, a bar per part on a terminal and a line per finished part (:mod:`.progress`).
``plan(...)`` and ``run_plan(...)`` are the two halves, for a caller that runs more (the headline
bound of ``varmem eval``) and prints one cost table for everything.

The result (JSON-serializable; ``"version": 2``; results without a version are version 1, which had
no "nll_conditioning", no within-alphabet tasks and only the q_a and likelihood methods)::

    version, model, classifier {method, label}, min_memory_size, dataset, split, seed, samples, episodes,
    classification_episodes, likelihood_samples, likelihood_episodes, tasks [keys], methods [names],
    conditioning {classes, examples, rule}, skipped [lines], elapsed_s,
    nll_vs_examples [rows], nll_vs_classes [rows], nll_conditioning [rows with "classes" and "examples"],
    classification {task key: {method: {method, label, ways, shots, alphabet, accuracy, ci95, wilson95,
                                        episodes, targets[, samples]}}},
    lake_runs {dir, runs, ways, method: {...}}, pictures [paths]

Task keys are ``5way1shot`` (between alphabets, as before) and ``5way1shot_within``.

Depends on ``varmem.models`` and ``varmem.episodes`` only: the caller opens the model and the
dataset (``varmem.distributed.run.evaluate_run`` does it for a run directory).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from varmem.episodes.dataset import Dataset
from varmem.episodes.errors import DataError
from varmem.episodes.show import save_png
from varmem.models.base import Capability
from varmem.models.eval.capabilities import (BASELINES, GENERIC_CLASSIFIER, HAUSDORFF_NATIVE, LIKELIHOOD, NO_NATIVE_DATA,
                                             NO_NATIVE_RUNS, baselines, classifier_of, method_label, methods_for,
                                             min_memory_size, reads_episode_memory, why_not)
from varmem.models.eval.classification import (DEFAULT_ALPHABETS, DEFAULT_TASKS, Task, alphabet_of,
                                               classification_accuracy, tasks_of)
from varmem.models.eval.conditioning import (DEFAULT_CONDITIONING_CLASSES, DEFAULT_CONDITIONING_EXAMPLES, RULE,
                                             nll_table_conditioning, rows_that_fit)
from varmem.models.eval.cost import (PartCost, classification_cost, format_cost, nll_classes_cost, nll_conditioning_cost,
                                     nll_examples_cost)
from varmem.models.eval.lake import lake_runs as load_lake_runs, lake_runs_accuracy, native_lake_runs
from varmem.models.eval.nll_tables import (CLASS_TABLE_TARGETS, DEFAULT_EXAMPLES, TABLES, classes_that_fit,
                                           examples_that_fit, nll_table_classes, nll_table_examples, objective_samples)
from varmem.models.eval.passes import check_positive, open_dataset, spec_problem
from varmem.models.eval.pictures import (SAMPLE_KINDS, address_picture, alphabet_grid, sample_grid, sample_grid_file,
                                         unconditional_grid)
from varmem.models.eval.progress import Progress, timed

RESULT_VERSION = 2
# Episodes per task for classification by likelihood unless given: it costs ways² × K decodes per
# episode (20-way 5-shot, K = 10: 4,000), where the other methods cost encoder passes or nothing.
LIKELIHOOD_EPISODES = 100


@dataclass
class Part:
    """One part of a plan: where its result goes, what it costs, how to run it, its result in a line."""

    key: tuple[str, ...]  # ("nll_vs_examples",), ("classification", "5way1shot", "q_a"), ...; (): stores its own
    cost: PartCost
    run: Callable[[Progress], Any]
    summary: Callable[[Any], str] = lambda value: ""


@dataclass
class Plan:
    header: str
    result: dict[str, Any]  # the settings, "skipped", and the parts' results as they finish
    parts: list[Part] = field(default_factory=list)

    @property
    def costs(self) -> list[PartCost]:
        return [p.cost for p in self.parts]


def dataset_info(dataset: Dataset, split: str) -> dict[str, Any]:
    """What a result records of its data: directory, name, source, image shape, and a fingerprint of
    the split's shards (equal for the same data wherever it is stored)."""
    name = dataset.resolve_split(split)
    shards = dataset.manifest["splits"][name]["shards"]
    digest = hashlib.sha256("".join(s.get("sha256", "") for s in shards).encode()).hexdigest()[:16]
    return {"dir": str(dataset.directory), "name": Path(dataset.directory).name,
            "source": (dataset.manifest.get("source") or {}).get("name"), "image_shape": list(dataset.image_shape),
            "split": name, "fingerprint": digest}


def _rows_summary(rows: list[dict[str, Any]]) -> str:
    """``96.10 → 91.20 nats`` (first and last row) and how many rows are below their optimum."""
    if not rows:
        return "no rows"
    below = sum(bool(r.get("beats_optimum")) for r in rows)
    return f"{rows[0]['nll']:.2f} → {rows[-1]['nll']:.2f} nats" + (f", {below} below the optimum (see the note)" if below else "")


def _accuracy(r: dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:.2f} ± {100 * (r['ci95'] or 0):.2f} % ({r['episodes']} episodes)"


def choose_methods(model, methods: Sequence[str] | None, native: bool = False) -> tuple[list[str], list[str]]:
    """(the classification methods to run, in table order, the baselines last; a line per requested
    method the model cannot run, saying why). ``methods`` None: every method the model has, and the
    baselines that can run (``hausdorff_native`` with ``native``: the data at its original
    resolution). "classifier" stands for the family's own classifier, whatever it is named."""
    available = methods_for(model)
    extra = baselines(native)
    own = classifier_of(model)[0] if model.supports(Capability.CLASSIFICATION) else None
    if methods is None:
        wanted = [*available, *(m for m, why in extra.items() if why is None)]
    else:
        wanted = list(dict.fromkeys(own if m == GENERIC_CLASSIFIER and own else m for m in methods))
    run, skipped = [], []
    for m in wanted:
        if m in extra:
            if extra[m] is not None:
                skipped.append(f"classification by {m}: {extra[m]}")
            continue
        if m in available:
            if available[m] is None:
                run.append(m)
            else:
                skipped.append(f"classification by {m}: {available[m]}")
        else:
            family = model.family or type(model).__name__
            skipped.append(f"classification by {m}: the {family!r} family has no classifier named {m!r}"
                           + (f" (its own is {own!r})" if own else " (it declares no classification)"))
    order = list(available)
    run.sort(key=order.index)
    run += [m for m, why in extra.items() if m in wanted and why is None]
    return run, skipped


def plan(model, dataset: Dataset | str, split: str, *, binarize: str = "none", threshold: float = 0.5, seed: int = 0,
         chunk: int = 100, samples: int = 1000, episodes: int = 100, tables: bool | Sequence[str] = True,
         classification: bool = True, lake_runs: str | Path | None = None, pictures: bool = True,
         out_dir: str | Path | None = None, classification_episodes: int = 1000, likelihood_samples: int = 10,
         likelihood_episodes: int | None = None, examples: Sequence[int] = DEFAULT_EXAMPLES, examples_per_class: int = 5,
         max_classes: int | None = None, tasks: Sequence[Sequence[Any]] = DEFAULT_TASKS,
         alphabets: Sequence[str] = DEFAULT_ALPHABETS, alphabet: str | None = None, methods: Sequence[str] | None = None,
         conditioning_classes: Sequence[int] = DEFAULT_CONDITIONING_CLASSES,
         conditioning_examples: Sequence[int] = DEFAULT_CONDITIONING_EXAMPLES, exact_address: bool = False,
         sample_kinds: Sequence[str] = SAMPLE_KINDS, hausdorff_data: Dataset | str | Path | None = None,
         hausdorff_lake_runs: Dataset | str | Path | None = None) -> Plan:
    """The parts of the protocol that ``model`` can run on ``split`` of ``dataset``, with their costs;
    nothing runs yet. Arguments as in :func:`evaluate`."""
    likelihood_episodes = min(LIKELIHOOD_EPISODES, classification_episodes) if likelihood_episodes is None else likelihood_episodes
    check_positive(samples=samples, episodes=episodes, classification_episodes=classification_episodes,
                   likelihood_samples=likelihood_samples, likelihood_episodes=likelihood_episodes, chunk=chunk)
    dataset = open_dataset(dataset)
    tables = set(TABLES if tables is True else () if tables is False else tables)
    if tables - set(TABLES):
        raise DataError(f"evaluation: tables must be among {', '.join(TABLES)}, got {', '.join(sorted(tables))}")
    try:
        task_list = tasks_of(tasks, (alphabet,) if alphabet is not None else alphabets)
    except ValueError as exc:
        raise DataError(f"evaluation: {exc}") from None
    for name, values in (("conditioning_classes", conditioning_classes), ("conditioning_examples", conditioning_examples)):
        low = 1 if name == "conditioning_classes" else 0
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
            raise DataError(f"evaluation: {name} must be ints ≥ {low}, got {list(values)!r}")
    data = dict(binarize=binarize, threshold=threshold)
    run_methods, method_skips = choose_methods(model, methods, native=hausdorff_data is not None
                                               or hausdorff_lake_runs is not None)
    result: dict[str, Any] = {
        "version": RESULT_VERSION, "model": model.family,
        "classifier": ({"method": classifier_of(model)[0], "label": classifier_of(model)[1]}
                       if model.supports(Capability.CLASSIFICATION) else None),
        "min_memory_size": min_memory_size(model),
        "dataset": dataset_info(dataset, split), "split": split, "seed": seed, "samples": samples,
        "episodes": episodes, "examples_per_class": examples_per_class, "classification_episodes": classification_episodes,
        "likelihood_samples": likelihood_samples, "likelihood_episodes": likelihood_episodes, "paired_tables": True,
        "tasks": [t.key for t in task_list] if classification else [], "methods": run_methods,
        "conditioning": {"classes": sorted(set(conditioning_classes)), "examples": sorted(set(conditioning_examples)),
                         "rule": RULE},
        "skipped": [],
    }
    skipped: list[str] = result["skipped"]
    if hausdorff_data is not None:  # the originals of hausdorff_native: which data, which shards
        result["hausdorff_data"] = dataset_info(open_dataset(hausdorff_data), split)
    header = (f"evaluation protocol: {type(model).__name__} ({model.family}) on {Path(dataset.directory).name}/{split}, "
              f"seed {seed}")
    p = Plan(header, result)
    reasons = why_not(model)

    if tables and reasons["nll_tables"] is not None:
        skipped.append(f"NLL tables: {reasons['nll_tables']}")
        tables = set()
    common = dict(samples=samples, episodes=episodes, seed=seed, chunk=chunk, exact_address=exact_address, **data)
    _plan_tables(p, model, dataset, split, tables, examples, examples_per_class, max_classes, common)
    if "conditioning" in tables:
        _plan_conditioning(p, model, dataset, split, conditioning_classes, conditioning_examples, common)
    if classification or lake_runs is not None:
        skipped.extend(method_skips)
    likelihood = dict(samples=likelihood_samples, chunk=chunk, seed=seed, exact_address=exact_address)
    if classification:
        result["classification"] = {}
        cls_methods = _without_originals(run_methods, hausdorff_data, NO_NATIVE_DATA, skipped)
        _plan_classification(p, model, dataset, split, cls_methods, task_list, data, classification_episodes,
                             likelihood_episodes, dict(likelihood, native=hausdorff_data))
    lake_methods = _without_originals(run_methods, hausdorff_lake_runs, NO_NATIVE_RUNS,
                                      skipped if lake_runs is not None else [])
    if lake_runs is not None and not lake_methods:
        skipped.append("Lake's runs: no classification method to run (see above)")
    elif lake_runs is not None:
        _plan_lake(p, model, lake_runs, lake_methods, binarize, threshold, dict(likelihood, native=hausdorff_lake_runs))
    result["pictures"] = []
    if pictures and out_dir is not None:
        kinds = list(sample_kinds) if reasons["samples"] is None else []
        for part, what in (("samples", "sample grids"), ("address_picture", "address picture")):
            if reasons[part] is not None:
                skipped.append(f"{what}: {reasons[part]}")
        if kinds or tables or reasons["address_picture"] is None:
            p.parts.append(Part(("pictures",), PartCost("pictures", "sample grids, q(a|x), NLL plots", 0),
                                lambda say: _draw_pictures(model, dataset, split, result, Path(out_dir), seed, data, kinds,
                                                           address=reasons["address_picture"] is None),
                                lambda paths: f"{len(paths)} files in {out_dir}"))
    return p


def _without_originals(methods: list[str], originals, why: str, skipped: list[str]) -> list[str]:
    """``methods`` less hausdorff_native when its originals are not given (saying so in ``skipped``)."""
    if HAUSDORFF_NATIVE in methods and originals is None:
        skipped.append(f"classification by {HAUSDORFF_NATIVE}: {why}")
        return [m for m in methods if m != HAUSDORFF_NATIVE]
    return methods


def _plan_tables(p: Plan, model, dataset: Dataset, split: str, tables: set[str], examples: Sequence[int],
                 examples_per_class: int, max_classes: int | None, common: dict[str, Any]) -> None:
    """The NLL tables' parts, for the rows the split supplies (the others skipped, saying why)."""
    k_obj, samples, episodes = objective_samples(model), common["samples"], common["episodes"]
    if "examples" in tables:
        fit, why = examples_that_fit(dataset, split, examples)
        p.result["skipped"].extend(why)
        p.result["nll_vs_examples"] = []
        if fit:
            p.parts.append(Part(("nll_vs_examples",), nll_examples_cost(episodes, fit, samples, k_obj),
                                lambda say: nll_table_examples(model, dataset, split, examples=fit, progress=say, **common),
                                _rows_summary))
    if "classes" in tables:
        fit_c, why = classes_that_fit(dataset, split, None, examples_per_class, max_classes)
        p.result["skipped"].extend(why)
        p.result["nll_vs_classes"] = []
        if fit_c:
            cost = nll_classes_cost(episodes, fit_c, min(max(fit_c), CLASS_TABLE_TARGETS), samples, k_obj)
            p.parts.append(Part(("nll_vs_classes",), cost,
                                lambda say: nll_table_classes(model, dataset, split, classes=fit_c, progress=say,
                                                              examples_per_class=examples_per_class, **common),
                                _rows_summary))


def _plan_conditioning(p: Plan, model, dataset: Dataset, split: str, classes: Sequence[int], examples: Sequence[int],
                       common: dict[str, Any]) -> None:
    """The talk's table: a part per C_test column, for the rows the model and the split allow (the
    others skipped, saying why); the columns' rows gather in one list, "nll_conditioning"."""
    fit, why = rows_that_fit(model, dataset, split, classes, examples)
    p.result["skipped"].extend(why)
    rows: list[dict[str, Any]] = p.result.setdefault("nll_conditioning", [])
    k_obj = objective_samples(model)
    for C, ns in fit.items():
        def run(say, C=C, ns=ns):
            column = nll_table_conditioning(model, dataset, split, classes=(C,), examples=ns, progress=say, **common)
            rows.extend(column)
            return column

        p.parts.append(Part((), nll_conditioning_cost(common["episodes"], C, ns, common["samples"], k_obj), run,
                            _rows_summary))


def _plan_classification(p: Plan, model, dataset: Dataset, split: str, methods: list[str], tasks: list[Task],
                         data: dict[str, Any], episodes: int, likelihood_episodes: int, options: dict[str, Any]) -> None:
    """A part per (task, method); a task the split cannot supply is skipped, saying why. ``options``: of
    :func:`classification_accuracy` (``native``: the originals, for hausdorff_native only)."""
    options = dict(options)
    native = options.pop("native", None)
    for task in tasks if methods else ():
        spec = task.spec(split, **data)
        problem = spec_problem(spec, dataset)
        if problem is None and alphabet_of(task.alphabet) == "within" and not dataset.split(split).alphabets:
            problem = f"split {split!r} records no alphabets"
        if problem is not None:
            p.result["skipped"].append(f"classification {task.name} skipped: {problem}")
            continue
        for m in methods:
            n = likelihood_episodes if m == LIKELIHOOD else episodes
            label = method_label(m, model)
            cost = classification_cost(task.name, m, n, spec.memory_classes, spec.num_targets, options["samples"], label)

            def run(say, spec=spec, m=m, n=n, task=task, label=label):
                with say.part(f"{task.name} by {label}", n) as done:
                    return classification_accuracy(None if m in BASELINES else model, dataset, spec, n, m, progress=done,
                                                   native=native if m == HAUSDORFF_NATIVE else None, **options)

            p.parts.append(Part(("classification", task.key, m), cost, run, _accuracy))


def _plan_lake(p: Plan, model, directory, methods: list[str], binarize: str, threshold: float,
               options: dict[str, Any]) -> None:
    """Lake's runs by every method the model has (and the baselines); their image size is checked now, and the
    originals (``options["native"]``, for hausdorff_native) against them, before anything runs."""
    data = dict(binarize="static" if binarize == "dynamic" else binarize, threshold=threshold)  # fixed images
    runs = list(load_lake_runs(model, directory, **data))
    if HAUSDORFF_NATIVE in methods:
        native_lake_runs(load_lake_runs(model, directory, **data), options["native"], **data)
    C, T = int(runs[0].memory_labels.max()) + 1, int(runs[0].targets.shape[0])
    cost = sum(classification_cost("", m, len(runs), C, T, options["samples"]).decodes for m in methods)

    def run(say):
        with say.part("Lake's runs", len(runs) * len(methods), unit="runs") as done:
            return lake_runs_accuracy(model, directory, methods=methods, progress=done, **options, **data)

    labels = ", ".join(method_label(m, model) for m in methods)
    p.parts.append(Part(("lake_runs",), PartCost(f"Lake's runs ({labels})", f"{len(runs)} runs × {C} classes × {T} targets",
                                                 cost),
                        run, lambda r: "; ".join(f"{m} {_accuracy(r[m])}" for m in methods)))


def _draw_pictures(model, dataset, split, result, folder: Path, seed: int, data: dict, sample_kinds: Sequence[str],
                   address: bool) -> list[str]:
    """The sample grids of ``sample_kinds``, the address picture, the attention picture (families with an
    ``attention_trace``), and plots of the NLL tables in ``result``."""
    from varmem.models.eval.plots import nll_classes_plot, nll_conditioning_plot, nll_examples_plot
    from varmem.plotting import save_figure

    drawn: list[tuple[str, Callable]] = [
        (sample_grid_file(kind), lambda kind=kind: sample_grid(model, dataset, split, seed=seed, kind=kind, **data))
        for kind in sample_kinds]
    if sample_kinds and reads_episode_memory(model):  # Rezende et al.'s task 3: samples given an alphabet
        drawn.append(("samples_alphabet.png", lambda: alphabet_grid(model, dataset, split, seed=seed, **data)))
    if sample_kinds and min_memory_size(model) == 0:  # task 1: generation with an empty memory
        drawn.append(("samples_unconditional.png", lambda: unconditional_grid(model, dataset, split, seed=seed)))
    if address:
        drawn.append(("address_top5.png", lambda: address_picture(model, dataset, split, seed=seed, **data)))
    paths = [str(save_png(draw(), folder / name)) for name, draw in drawn]
    if callable(getattr(model, "attention_trace", None)):  # DRAW-style families: read/write windows per step
        from varmem.models.eval.attention import save_attention_picture

        paths.append(str(save_attention_picture(model, dataset, split, folder / "attention.png", seed=seed, **data)))
    for table, plot in (("examples", nll_examples_plot), ("classes", nll_classes_plot)):
        if result.get(f"nll_vs_{table}"):
            paths.append(str(save_figure(plot(result[f"nll_vs_{table}"]), folder / f"nll_vs_{table}.png")))
    if result.get("nll_conditioning"):
        paths.append(str(save_figure(nll_conditioning_plot(result["nll_conditioning"]), folder / "nll_conditioning.png")))
    return paths


def run_plan(p: Plan, say: Progress) -> dict[str, Any]:
    """Run the parts of ``p`` in order; a line as each finishes (its result, time, rate, what is left)."""
    t_start = time.perf_counter()
    left = sum(c.decodes for c in p.costs)
    for part in p.parts:
        elapsed = timed()
        value = part.run(say)
        if part.key:  # () : the part stored its result itself (a column of the conditioning table)
            node = p.result
            for k in part.key[:-1]:
                node = node.setdefault(k, {})
            node[part.key[-1]] = value
        left -= part.cost.decodes
        say.finished(part.cost.name, elapsed(), part.cost.decodes, left, part.summary(value))
    p.result["elapsed_s"] = time.perf_counter() - t_start
    return p.result


def announce(p: Plan, say: Progress, before: Sequence[PartCost] = ()) -> None:
    """Print the plan: its header, the cost of ``before`` (parts the caller runs first) and of its parts, what it skips."""
    say.say(p.header)
    say.say(format_cost([*before, *p.costs]))
    if p.result["skipped"]:
        say.say("skipped (the model's capabilities or the split do not allow them):")
    for line in p.result["skipped"]:
        say.say(f"  {line}")


def evaluate(model, dataset: Dataset | str, split: str, *, progress: Callable[[str], None] | None = print,
             quiet: bool = False, **options: Any) -> dict[str, Any]:
    """The evaluation protocol of ``model`` on ``split`` of ``dataset``.

    ``binarize``/``threshold``: the episodes' preprocessing (the run's ``data`` section);
    ``seed``: the episodes' and samples' seed; ``chunk``: samples per ``log_likelihood`` pass;
    ``samples``: K of the NLL tables' bound; ``episodes``: episodes per table (per column of the
    conditioning table); ``tables``: True (all), False, or some of ("examples", "classes",
    "conditioning"); ``examples``: the n of the NLL-vs-examples table; ``conditioning_classes`` /
    ``conditioning_examples``: the C_test columns and n rows of the talk's table (n = 0 only for
    models with ``min_memory_size`` 0). ``classification``: False skips the tasks;
    ``classification_episodes`` per N-way K-shot task (``tasks``: (ways, shots) pairs, one query
    per class, each between alphabets and/or within one as ``alphabets`` says — "between" and
    "within"; a (ways, shots, alphabet) triple keeps its own; ``alphabet``: the old single-mode
    argument, "any" or "within"); ``methods``: the classification methods (default every one the
    model has, and the pixel baseline; "classifier" = the family's own); ``likelihood_samples``: K
    of each p(x|M_c) of likelihood classification, over ``likelihood_episodes`` per task (default
    min(100, ``classification_episodes``): it costs classes × targets × K decodes per episode where
    the other methods cost one encoder pass or none); ``lake_runs``: a lake-runs dataset directory
    (optional); ``pictures`` are drawn into ``out_dir`` when one is given (``sample_kinds``: "mean"
    and/or "binary" grids). The model is evaluated on the device its parameters are on.
    ``progress``: where lines go (None or ``quiet``: nowhere).

    Returns a JSON-serializable dict (its layout in the module docstring); what could not be measured
    (parts the model's capabilities do not allow, rows the split cannot supply) is listed under
    "skipped".
    """
    say = Progress(progress, quiet=quiet)
    p = plan(model, dataset, split, **options)
    announce(p, say)
    return run_plan(p, say)


__all__ = ["DEFAULT_ALPHABETS", "DEFAULT_CONDITIONING_CLASSES", "DEFAULT_CONDITIONING_EXAMPLES", "DEFAULT_EXAMPLES",
           "DEFAULT_TASKS", "LIKELIHOOD_EPISODES", "Part", "Plan", "RESULT_VERSION", "announce", "choose_methods",
           "dataset_info", "evaluate", "plan", "run_plan"]
