"""Which parts of the evaluation protocol a model can run, from its declared capabilities.

    part             needs
    NLL tables       Capability.LIKELIHOOD
    q_a              Capability.ADDRESS and CLASSIFICATION, and a model that reads the episode's memory
    likelihood       Capability.LIKELIHOOD, and a model that reads the episode's memory
    samples          Capability.SAMPLING
    address picture  Capability.ADDRESS, and a model that reads the episode's memory

``q_a`` and ``likelihood`` are the two classification methods (p(c|x) from Σ q(a|x) over a class's
entries; p(c|x) ∝ p(x | M_c)). Each function returns None when the model can run the part, else
the reason, which the protocol records under "skipped".
"""
from __future__ import annotations

from varmem.models.base import Capability

METHODS = ("q_a", "likelihood")
PARTS = ("nll_tables", *METHODS, "samples", "address_picture")


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


def why_not(model) -> dict[str, str | None]:
    """Each part of :data:`PARTS`: None when the model can run it, else why not."""
    episode = reads_episode_memory(model)
    has = model.supports

    def need(*requirements: tuple[bool, str]) -> str | None:
        return next((reason for ok, reason in requirements if not ok), None)

    no_memory = (episode, _no_episode_memory(model))
    likelihood = (has(Capability.LIKELIHOOD), _lacks(model, Capability.LIKELIHOOD, "likelihood"))
    address = (has(Capability.ADDRESS), _lacks(model, Capability.ADDRESS, "address posterior q(a|x)"))
    return {
        "nll_tables": need(likelihood),
        "q_a": need(no_memory, address,
                    (has(Capability.CLASSIFICATION), _lacks(model, Capability.CLASSIFICATION, "classifier"))),
        "likelihood": need(no_memory, likelihood),
        "samples": need((has(Capability.SAMPLING), _lacks(model, Capability.SAMPLING, "sampler"))),
        "address_picture": need(no_memory, address),
    }


def methods_for(model) -> dict[str, str | None]:
    """Each classification method of :data:`METHODS`: None when the model supports it, else why not."""
    reasons = why_not(model)
    return {m: reasons[m] for m in METHODS}
