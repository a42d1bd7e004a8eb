"""Which parts of the evaluation protocol a model can run, from its declared capabilities.

    part                 needs
    NLL tables           Capability.LIKELIHOOD
    n = 0 rows           Capability.LIKELIHOOD and ``model.min_memory_size == 0`` (an empty memory [G, 0, 1, H, W])
    q_a                  Capability.ADDRESS and CLASSIFICATION, and a model that reads the episode's memory
    the family's own     Capability.CLASSIFICATION without ADDRESS (its ``classifier_method``, e.g. Matching
      classifier         Networks' "matching", the Neural Statistician's "kl"), reading the episode's memory
    likelihood           Capability.LIKELIHOOD, and a model that reads the episode's memory
    cosine               Capability.EMBEDDING (``model.embed``: any model, memory or not)
    pixel                nothing: no model (the baseline every table carries)
    hausdorff            nothing: no model (a baseline every table carries)
    hausdorff_native     no model, and the eval data at its original resolution (``--hausdorff-data``)
    samples              Capability.SAMPLING
    address picture      Capability.ADDRESS, and a model that reads the episode's memory

The classification methods (:mod:`varmem.models.eval.classification`): ``q_a`` p(c|x) from Σ q(a|x)
over a class's entries; the family's own classifier (``model.class_scores``, named by the family's
``classifier_method``, see :class:`varmem.models.base.FewShotModel`); ``likelihood`` p(c|x) ∝
p(x | M_c); ``cosine`` the nearest support item by cosine similarity of ``model.embed`` features;
``pixel`` the same nearest neighbour on raw pixels; ``hausdorff`` the nearest support image by Lake et
al.'s modified Hausdorff distance between ink-point sets (:mod:`varmem.models.eval.hausdorff`) on the
episode's images, ``hausdorff_native`` the same on the same episodes' images at their original resolution
(Lake's 105×105). Each function returns None when the model can run the part, else the reason, which the
protocol records under "skipped". The baselines (:data:`BASELINES`) need no model: :func:`baselines`.
"""
from __future__ import annotations

from varmem.models.base import Capability

Q_A, LIKELIHOOD, COSINE, PIXEL = "q_a", "likelihood", "cosine", "pixel"
HAUSDORFF, HAUSDORFF_NATIVE = "hausdorff", "hausdorff_native"
GENERIC_CLASSIFIER = "classifier"  # the name of a family's class_scores when it names none
# the methods every model is asked about, in table order (a family's own classifier follows q_a)
METHODS = (Q_A, LIKELIHOOD, COSINE)
# the no-training baselines, in table order: they need no model, and score the same for every model
BASELINES = (PIXEL, HAUSDORFF, HAUSDORFF_NATIVE)
RESERVED = (LIKELIHOOD, COSINE, *BASELINES)  # the benchmark's own methods: no family classifier may take these names
LABELS = {Q_A: "q(a|x)", LIKELIHOOD: "likelihood p(x|M_c)", COSINE: "cosine NN (embed)", PIXEL: "pixels: cosine NN",
          HAUSDORFF: "modified Hausdorff NN", HAUSDORFF_NATIVE: "modified Hausdorff NN (originals)",
          GENERIC_CLASSIFIER: "the family's class_scores"}
NO_NATIVE_DATA = ("needs the evaluation data at its original resolution: --hausdorff-data DIR (the same source built "
                  "with `varmem data build ... --size 105`)")
NO_NATIVE_RUNS = ("needs Lake's runs at their original resolution: --hausdorff-lake-runs DIR (`varmem data build "
                  "--source lake-runs ... --size 105`)")


def baselines(native: bool = False) -> dict[str, str | None]:
    """Each no-training baseline, in table order: None when it can run, else why not (``hausdorff_native``
    runs only with ``native``, the same episodes' images at their original resolution)."""
    return {PIXEL: None, HAUSDORFF: None, HAUSDORFF_NATIVE: None if native else NO_NATIVE_DATA}
PARTS = ("nll_tables", "empty_memory", *METHODS, "classifier", "samples", "address_picture")


def reads_episode_memory(model) -> bool:
    """True when the model conditions on the episode's memory (not the VAE, not a learned memory)."""
    config = getattr(model, "config", None)
    return bool(getattr(model, "uses_memory", True)) and getattr(config, "memory", "episode") != "learned"


def _lacks(model, capability: Capability, what: str) -> str:
    return (f"the {model.family or type(model).__name__!r} family has no {what} "
            f"(it does not declare the {capability.value!r} capability)")


def _no_episode_memory(model) -> str:
    return (f"{type(model).__name__} does not read the episode's memory"
            + (" (learned memory)" if getattr(model, "uses_memory", True) else ""))


def classifier_of(model) -> tuple[str, str]:
    """(name, label) of the family's own classifier (``class_scores``) in the tables: its
    ``classifier_method`` / ``classifier_label``, or by default "q_a" / "q(a|x)" for a family with an
    address posterior and "classifier" / "the family's class_scores" for one without."""
    name = getattr(model, "classifier_method", "") or (Q_A if model.supports(Capability.ADDRESS) else GENERIC_CLASSIFIER)
    label = getattr(model, "classifier_label", "") or LABELS.get(name, name)
    return str(name), str(label)


def min_memory_size(model) -> int:
    """The fewest memory entries the model conditions on (``FewShotModel.min_memory_size``; 1 for a
    model object that does not say, 0 for one that ignores its memory)."""
    value = getattr(model, "min_memory_size", None)
    if value is None:
        return 1 if getattr(model, "uses_memory", True) else 0
    return int(value)


def why_not(model) -> dict[str, str | None]:
    """Each part of :data:`PARTS`: None when the model can run it, else why not. "classifier" is the
    family's own classifier when it is not q_a (None for a q_a family: the q_a entry covers it)."""
    episode = reads_episode_memory(model)
    has = model.supports

    def need(*requirements: tuple[bool, str]) -> str | None:
        return next((reason for ok, reason in requirements if not ok), None)

    no_memory = (episode, _no_episode_memory(model))
    likelihood = (has(Capability.LIKELIHOOD), _lacks(model, Capability.LIKELIHOOD, "likelihood"))
    address = (has(Capability.ADDRESS), _lacks(model, Capability.ADDRESS, "address posterior q(a|x)"))
    classifies = (has(Capability.CLASSIFICATION), _lacks(model, Capability.CLASSIFICATION, "classifier"))
    name, _ = classifier_of(model)
    family = model.family or type(model).__name__
    own = None
    if name != Q_A and has(Capability.CLASSIFICATION):
        own = need(no_memory, (name not in RESERVED and name.isidentifier(),
                               f"the {family!r} family names its classifier {name!r}: a name the benchmark reserves "
                               f"({', '.join(RESERVED)}) or not an identifier; set its classifier_method"))
    empty = min_memory_size(model)
    return {
        "nll_tables": need(likelihood),
        "empty_memory": need(likelihood, (empty == 0, f"the {family!r} family conditions on at least {empty} memory "
                                                      f"entr{'y' if empty == 1 else 'ies'} (min_memory_size = {empty})")),
        Q_A: need(no_memory, address, classifies,
                  (name == Q_A, f"the {family!r} family's classifier is {name!r}, not q(a|x)")),
        LIKELIHOOD: need(no_memory, likelihood),
        COSINE: need((has(Capability.EMBEDDING), _lacks(model, Capability.EMBEDDING, "embedding (features for cosine NN)"))),
        "classifier": own,
        "samples": need((has(Capability.SAMPLING), _lacks(model, Capability.SAMPLING, "sampler"))),
        "address_picture": need(no_memory, address),
    }


def methods_for(model) -> dict[str, str | None]:
    """Each classification method of the model, in table order — q_a, the family's own classifier (when
    it has one that is not q_a), likelihood, cosine: None when the model supports it, else why not.
    The baselines (pixel, hausdorff) need no model and are not listed: :func:`baselines`."""
    reasons = why_not(model)
    out = {Q_A: reasons[Q_A]}
    name, _ = classifier_of(model)
    if name != Q_A and model.supports(Capability.CLASSIFICATION):
        # a name the benchmark reserves (or no identifier) is listed as "classifier", with the reason
        out[name if name not in RESERVED and name.isidentifier() else GENERIC_CLASSIFIER] = reasons["classifier"]
    out[LIKELIHOOD] = reasons[LIKELIHOOD]
    out[COSINE] = reasons[COSINE]
    return out


def method_label(method: str, model=None) -> str:
    """How a method is printed: "q(a|x)", "likelihood p(x|M_c)", the family's classifier_label, ..."""
    if model is not None and method == classifier_of(model)[0]:
        return classifier_of(model)[1]
    return LABELS.get(method, method)
