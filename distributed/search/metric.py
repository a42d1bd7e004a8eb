"""The metric a search ranks its trials by, chosen per search: a validation value the trials' families log.

A validation row of ``metrics.jsonl`` holds what :func:`varmem.models.eval.bound.evaluate_bound` measures
for the family: ``nll_bound`` (the K-sample NLL bound, nats) when the model has a likelihood
(``Capability.LIKELIHOOD``), ``accuracy`` (few-shot accuracy on the validation episodes) when it classifies
(``Capability.CLASSIFICATION``), ``objective_nll_bound`` when its objective is a bound, and the objective's
terms by name (Matching Networks: ``cross_entropy``). The search's metric is one of them:

* by default the validation NLL bound (``nll_bound``, min) when every trial's model has a likelihood, and
  the validation accuracy (``accuracy``, max) when none has one and every one classifies;
* named in the space file, ``metric: accuracy`` or ``metric: {name: cross_entropy, mode: min}`` (the mode is
  known for ``nll_bound``, ``objective_nll_bound`` and ``accuracy``, and must be given for any other value).

A search whose trials mix families with and without a likelihood has no default (their NLLs and
accuracies do not rank each other): it is refused, naming both, unless the space names a metric every
trial logs. Every trial's model is checked before any trial starts (:func:`choose_metric`, from the models
:func:`varmem.distributed.search.space.preflight` builds); a metric a family does not log is one line
naming it and what the family logs. Tune sees the metric as ``val_<name>`` in every report.

Importing this module imports neither torch nor Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from varmem.distributed.config import ConfigError

METRIC_KEY = "metric"  # the space file's key (not a config path: config paths are section.key)
MODES = ("min", "max")
KNOWN_MODES = {"nll_bound": "min", "objective_nll_bound": "min", "accuracy": "max"}
NLL, ACCURACY = "nll_bound", "accuracy"
# The values of a validation row that are not metrics a search may rank by.
NOT_METRICS = ("kind", "step", "samples", "objective_samples", "episodes")


class MetricError(ConfigError):
    """A search metric that is malformed, that a trial's family does not log, or no default for a mixed search."""


@dataclass(frozen=True)
class SearchMetric:
    """A validation value (``name``, a key of the validation rows) and whether lower or higher is better."""

    name: str = NLL
    mode: str = "min"
    explicit: bool = False  # named in the space file (else the families' default)

    @property
    def tune_key(self) -> str:
        """Its key in the reports to Tune (``val_nll_bound``, ``val_accuracy``)."""
        return f"val_{self.name}"

    @property
    def column(self) -> str:
        """The stem of its results columns: ``val_nll`` (``val_nll_final``, ``val_nll_best``) for the NLL bound,
        else ``val_<name>``."""
        return "val_nll" if self.name == NLL else f"val_{self.name}"

    @property
    def final_key(self) -> str:
        return f"{self.column}_final"

    @property
    def best_key(self) -> str:
        return f"{self.column}_best"

    @property
    def label(self) -> str:
        """What it is called in the table and messages."""
        return {NLL: "validation NLL bound", ACCURACY: "validation accuracy"}.get(self.name, f"validation {self.name}")

    @property
    def unit(self) -> str:
        return " nats" if self.name in (NLL, "objective_nll_bound") else ""

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def selection(self) -> str:
        return f"{'lowest' if self.mode == 'min' else 'highest'} final {self.label}"

    def to_raw(self) -> dict[str, str]:
        return {"name": self.name, "mode": self.mode}

    @classmethod
    def from_raw(cls, raw: Any, where: str = "space") -> "SearchMetric":
        """``accuracy`` or ``{name: cross_entropy, mode: min}`` (the space file's ``metric:``)."""
        example = "e.g. metric: accuracy, or metric: {name: cross_entropy, mode: min}"
        if isinstance(raw, str):
            name, mode = raw, None
        elif isinstance(raw, dict) and set(raw) <= {"name", "mode"} and "name" in raw:
            name, mode = raw["name"], raw.get("mode")
        else:
            raise MetricError(f"{where}: {METRIC_KEY}: expected a validation value's name or {{name: ..., mode: min|max}} "
                              f"({example}), got {raw!r}")
        if not isinstance(name, str) or not name.strip() or name in NOT_METRICS:
            raise MetricError(f"{where}: {METRIC_KEY}: {name!r} is not a validation value ({example})")
        name = name.strip()
        if mode is None:
            mode = KNOWN_MODES.get(name)
            if mode is None:
                raise MetricError(f"{where}: {METRIC_KEY}: {name}: say whether lower or higher is better, "
                                  f"metric: {{name: {name}, mode: min}} (or max)")
        if mode not in MODES:
            raise MetricError(f"{where}: {METRIC_KEY}: {name}: mode must be min or max, got {mode!r}")
        return cls(name=name, mode=mode, explicit=True)


DEFAULT = SearchMetric()


@dataclass(frozen=True)
class TrialModel:
    """What the metric check needs of one trial's model: which config it is, its family, its capabilities,
    and (for a metric that is neither the bound nor accuracy) a function giving every validation value it logs."""

    shown: str  # "model.name: 'matching_networks'" or "the base config"
    family: str
    likelihood: bool
    classifies: bool
    all_values: Any = None  # () -> tuple[str, ...]: the validation row's values (runs the objective once)

    def logs(self) -> tuple[str, ...]:
        """The validation values known without running the model."""
        return ((NLL, "nll_bound_stderr") if self.likelihood else ()) + ((ACCURACY, "accuracy_stderr") if self.classifies else ())


def choose_metric(explicit: SearchMetric | None, models: list[TrialModel], where: str = "space") -> SearchMetric:
    """The search's metric (see the module docstring); MetricError naming the space file, the trial config and
    the family when there is none."""
    if explicit is not None:
        for m in models:
            if explicit.name in m.logs():
                continue
            values = tuple(m.all_values()) if m.all_values is not None else m.logs()
            if explicit.name not in values:
                raise MetricError(f"{where}: {METRIC_KEY}: {explicit.name}: {m.shown} ({m.family}) does not log it in "
                                  f"validation (it logs {', '.join(sorted(values)) or 'nothing'})")
        return explicit
    with_nll = [m for m in models if m.likelihood]
    without = [m for m in models if not m.likelihood]
    if not without:
        return DEFAULT
    if with_nll:
        a, b = with_nll[0], without[0]
        common = "accuracy" if all(m.classifies for m in models) else None
        raise MetricError(
            f"{where}: the trials mix families with a likelihood ({a.family}: {a.shown}) and without one "
            f"({b.family}: {b.shown}): there is no default metric for both; "
            + (f"name one every trial logs, e.g. {METRIC_KEY}: {common}" if common
               else f"name a validation value every trial logs ({METRIC_KEY}: ...), or search them separately"))
    unable = next((m for m in models if not m.classifies), None)
    if unable is not None:
        raise MetricError(f"{where}: {unable.shown} ({unable.family}) has neither a likelihood nor a classifier: "
                          f"name the validation value to rank trials by ({METRIC_KEY}: {{name: ..., mode: min}})")
    return SearchMetric(ACCURACY, "max")
