"""Typed configuration fields, shared by every layer: run config sections and model family configs.

A config is a dataclass whose fields carry type annotations; :class:`Section` checks (and mildly
coerces) every field against its annotation on construction, then runs the class's ``validate``.
Errors are :class:`ConfigError` naming ``section.field`` and the value. Importable without torch.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A run config (file, ``--set`` override or saved run) is not what it must be."""


# --- generic typed fields ---------------------------------------------------------------------


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked (and mildly coerced) against ``annotation``; ConfigError naming ``where``.

    Understands bool, int, float, str, tuple[X, ...], tuple[X, Y], X | None, Literal, list, dict
    and nested dataclasses (returned as their dict, checked field by field). Coercions: an int
    where a float is expected; a string that parses as a float where a float is expected
    (YAML 1.1 reads ``1e-4`` as a string); a list where a tuple is expected; an int or float
    where a str is expected (``--set run.out=2024``). Anything else of the wrong type is an error.
    """
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {annotation}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, dict) or annotation in (list, dict):
        base = origin or annotation
        if not isinstance(value, base):
            raise ConfigError(f"{where} must be a {base.__name__}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {annotation.__name__} fields, got {value!r}")
        return check_fields(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value  # a type this checker does not know: left to the owner's own validation


def check_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with every key checked against dataclass ``cls``'s field types; unknown keys raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    out = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        out[key] = check_value(value, hints[key], f"{where}.{key}")
    return out


class Section:
    """A config section: a dataclass whose fields are type-checked and range-checked on construction."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            checked = check_value(getattr(self, f.name), hints[f.name], f"{self.section}.{f.name}")
            object.__setattr__(self, f.name, checked)
        self.validate()

    def validate(self) -> None:
        """Range checks; raise ConfigError naming the field and the value."""

    def _require(self, ok: bool, name: str, requirement: str) -> None:
        if not ok:
            raise ConfigError(f"{self.section}.{name} must be {requirement}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str | None = None):
        return cls(**check_fields(cls, data or {}, where or cls.section))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}


def plain(value: Any) -> Any:
    """YAML-friendly: tuples as lists, dataclasses as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
