"""Typed configuration fields, shared by every layer: run config sections and model family configs.

A config is a dataclass whose fields carry type annotations; :class:`Section` checks (and mildly
coerces) every field against its annotation on construction, then runs the class's ``validate``.
Errors are :class:`ConfigError` naming ``section.field`` and the value. Importable without torch.
"""
from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import fields
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A run config (file, ``--set`` override or saved run) is not what it must be."""


INT_LIMIT = 2**63  # an int field's values lie in [-2^63, 2^63)

# --- generic typed fields ---------------------------------------------------------------------


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked (and mildly coerced) against ``annotation``; ConfigError naming ``where``.

    Understands bool, int, float, str, tuple[X, ...], tuple[X, Y], X | None, Literal, list, dict
    and nested dataclasses (returned as their dict, checked field by field). Coercions: an int
    where a float is expected; a string that parses as a float where a float is expected
    (YAML 1.1 reads ``1e-4`` as a string); a list where a tuple is expected; an int or float
    where a str is expected (``--set run.out=2024``). Anything else of the wrong type is an error.

    Every float must be finite (``.inf``, ``nan``, ``1e999`` and integers too large for a float are
    refused: ``optim.eps=inf`` trained with zero updates); a string must be text that can be written
    back as UTF-8 (no lone surrogates, from undecodable bytes in an argument) and hold no NUL character.
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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {shown(value)} matches none of {annotation}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}, got {shown(value)}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {shown(value)}")
        return tuple(check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, dict) or annotation in (list, dict):
        base = origin or annotation
        if not isinstance(value, base):
            raise ConfigError(f"{where} must be a {base.__name__}, got {shown(value)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {annotation.__name__} fields, got {shown(value)}")
        return check_fields(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {shown(value)}")
        if not -INT_LIMIT <= value < INT_LIMIT:  # counts and seeds: torch and numpy take 64-bit integers
            raise ConfigError(f"{where} must be an integer of magnitude below 2^63, got {shown(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {shown(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {shown(value)}")
        return number
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return str(value)
            except ValueError:  # an int of more digits than Python converts
                raise ConfigError(f"{where} must be a string, got {shown(value)}") from None
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {shown(value)}")
        return check_text(value, where)
    return value  # a type this checker does not know: left to the owner's own validation


def check_text(value: str, where: str) -> str:
    """``value`` if it can be saved as UTF-8 and used as a path; ConfigError naming ``where`` otherwise."""
    if "\x00" in value:
        raise ConfigError(f"{where} must not hold a NUL character, got {shown(value)}")
    if not is_utf8(value):
        raise ConfigError(f"{where} holds bytes that are not UTF-8 text ({as_bytes(value)}): write the value in UTF-8")
    return value


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates: Python keeps an argument's or a file
    name's undecodable bytes as such)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_bytes(text: str) -> str:
    """``text`` for a message, its undecodable bytes as ``\\xff``: ``'a\\xff'``."""
    try:
        return repr(text.encode("utf-8", "surrogateescape"))[1:]
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return ascii(text)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 3, 6, 6, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def shown(value: Any) -> str:
    """A value for a one-line message: a repr cut short (nested or long values abbreviated with ``...``;
    a YAML alias bomb or a 10^5000 integer is never written out in full)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return _SHORT.repr(value)


def check_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with every key checked against dataclass ``cls``'s field types; unknown keys raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    out = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {shown(key)} (known: {', '.join(known)})")
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
            raise ConfigError(f"{self.section}.{name} must be {requirement}, got {shown(getattr(self, name))}")

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
