"""Split roles: what a split is for, whatever the build named it.

A run trains on one split and validates and evaluates on another, but the names depend on how
the dataset was built: a release build has ``background`` / ``evaluation``, a ``--split
alphabets`` or ``--split characters`` build ``train`` / ``test``, a folder build ``all``. Two
roles name the parts a run needs whatever they are called:

    role    split names that play it (the naming rule)
    train   background, train        the classes training episodes come from
    eval    evaluation, test         the held-out classes of validation and evaluation

Each dataset maps the roles to its splits: ``manifest["roles"]`` (written by ``varmem data
build``), or by the naming rule for a manifest written before roles existed. A split name a
config gives (``data.train_split``, ``data.eval_split``, ``--split``) resolves to itself when the
dataset has that split; otherwise the role it names — ``train`` / ``eval``, or a split name of
the naming rule — resolves to the dataset's split of that role. So a config written for a
release build (background / evaluation) runs on an alphabets build (train / test) and the
other way round; ``all`` plays no role (name it explicitly to use it).
"""
from __future__ import annotations

from typing import Any, Iterable

from varmem.episodes.errors import DataError

ROLES = ("train", "eval")
# name → role: the role names themselves and the split names builds write
ROLE_OF_NAME = {"train": "train", "background": "train", "eval": "eval", "evaluation": "eval", "test": "eval"}


def role_of(name: str) -> str | None:
    """The role a split name plays by the naming rule (None for ``all``, ``lake-runs``, ...)."""
    return ROLE_OF_NAME.get(name)


def roles_by_naming_rule(split_names: Iterable[str]) -> dict[str, str]:
    """role → split for the splits the naming rule gives a role; a role that two splits could play
    is left out (ambiguous: a config must name the split)."""
    candidates: dict[str, list[str]] = {}
    for name in split_names:
        role = role_of(name)
        if role is not None:
            candidates.setdefault(role, []).append(name)
    return {role: names[0] for role, names in candidates.items() if len(names) == 1}


def manifest_roles(manifest: dict[str, Any], where: str = "manifest.json") -> dict[str, str]:
    """The role map of a manifest: its ``roles`` field, checked, or the naming rule when it has none."""
    splits = manifest.get("splits") or {}
    roles = manifest.get("roles")
    if roles is None:
        return roles_by_naming_rule(splits)
    if not isinstance(roles, dict):
        raise DataError(f"{where}: field 'roles' must be a mapping of role ({', '.join(ROLES)}) to split name, got {roles!r}")
    for role, split in roles.items():
        if not isinstance(split, str):
            raise DataError(f"{where}: roles.{role} must be a split name, got {split!r}")
        if role not in ROLES:
            raise DataError(f"{where}: roles.{role} is not a role (roles are {', '.join(ROLES)})")
        if split not in splits:
            raise DataError(f"{where}: roles.{role} is {split!r}, not a split of this dataset "
                            f"({', '.join(map(repr, splits))})")
    return dict(roles)


def resolve_split(name: str, roles: dict[str, str], split_names: list[str], dataset: str) -> str:
    """The split of ``dataset`` that ``name`` means: itself when it is a split, else its role's split.
    A DataError names the dataset, the role and the splits it has otherwise."""
    if name in split_names:
        return name
    role = role_of(name)
    if role is not None and role in roles:
        return roles[role]
    have = f"this dataset has {', '.join(map(repr, split_names))} ({describe_roles(roles)})"
    if role is None:
        raise DataError(f"{dataset}: no split {name!r}; {have}")
    raise DataError(f"{dataset}: no split {name!r} and no split plays role {role!r}; {have}: name one of its splits")


def describe_roles(roles: dict[str, str]) -> str:
    """``roles train → 'background', eval → 'evaluation'`` (or ``no split plays a role``), for messages."""
    if not roles:
        return "no split plays a role"
    return "roles " + ", ".join(f"{r} → {roles[r]!r}" for r in ROLES if r in roles)
