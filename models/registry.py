"""The registry of model families: one name → the model class and its typed config.

A family is one module that defines a config dataclass and a model class and registers them::

    @dataclass(frozen=True)
    class TinyConfig(FamilyConfig):
        z_dim: int = 8

    @register("tiny", TinyConfig)
    class Tiny(FewShotModel):
        capabilities = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING})
        def __init__(self, config: TinyConfig, image_shape): ...

The built-in families live in :mod:`varmem.models.families` and register on import. A research
family outside the package registers itself in a module that the user names — on the command
line (``varmem train --plugin my_family`` or ``--plugin path/to/my_family.py``), in the
``VARMEM_PLUGINS`` environment variable (comma-separated), or through the ``varmem.families``
entry-point group of an installed package. A config file can only *name* a registered family
(``model.name``): nothing in a config imports code.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from varmem.typed import ConfigError, Section, check_fields, plain

PLUGINS_ENV = "VARMEM_PLUGINS"
ENTRY_POINT_GROUP = "varmem.families"


@dataclass(frozen=True)
class FamilyConfig(Section):
    """Base of every family's typed config (the run config's ``model`` section, less ``name``).

    Fields are type-checked on construction (``model.<field>`` in errors); a family adds range
    checks in ``validate``. Saved with the run as ``model: {name: <family>, <field>: ...}``.
    """

    section: ClassVar[str] = "model"
    family: ClassVar[str] = ""  # set by register()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.family, **{f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str | None = None):
        data = {k: v for k, v in (data or {}).items() if k != "name"}
        return cls(**check_fields(cls, data, where or "model"))


@dataclass(frozen=True)
class Family:
    name: str
    model: type  # a varmem.models.base.FewShotModel subclass
    config: type  # its FamilyConfig subclass
    module: str  # where it was registered

    def build(self, config: FamilyConfig | dict[str, Any] | None, image_shape) -> Any:
        """The family's model for images of ``image_shape`` ((H, W) or (1, H, W))."""
        if config is None or isinstance(config, dict):
            config = self.config.from_dict(config or {})
        if not isinstance(config, self.config):
            raise ConfigError(f"model: family {self.name!r} takes a {self.config.__name__}, got {type(config).__name__}")
        return self.model(config, image_hw(image_shape))


_FAMILIES: dict[str, Family] = {}
_BUILTINS_LOADED = False
_PLUGINS_LOADED: list[str] = []


def register(name: str, config_class: type) -> Callable[[type], type]:
    """Class decorator: register a model class under ``name`` with its config dataclass."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: a family name is an identifier, got {name!r}")
    if not (isinstance(config_class, type) and issubclass(config_class, FamilyConfig)):
        raise TypeError(f"register({name!r}): the config class must subclass varmem.models.registry.FamilyConfig")

    def decorate(model_class: type) -> type:
        from varmem.models.base import FewShotModel

        if not issubclass(model_class, FewShotModel):
            raise TypeError(f"register({name!r}): {model_class.__name__} must subclass varmem.models.base.FewShotModel")
        old = _FAMILIES.get(name)
        if old is not None and (old.model.__module__, old.model.__qualname__) != (model_class.__module__, model_class.__qualname__):
            raise ValueError(f"register: family {name!r} is already registered by {old.module} ({old.model.__name__})")
        model_class.family = name
        config_class.family = name
        _FAMILIES[name] = Family(name, model_class, config_class, model_class.__module__)
        return model_class

    return decorate


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("varmem.models.families")
        load_plugins(os.environ.get(PLUGINS_ENV, "").split(","))
        _load_entry_points()


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party package must not hide the built-in families
            print(f"varmem: entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) failed to load: {exc}", file=sys.stderr)


def load_plugins(specs: Iterable[str]) -> list[str]:
    """Import each plugin: a module name (``my_pkg.family``) or a path to a ``.py`` file.

    Returns the specs loaded. A plugin that cannot be imported is a ConfigError naming it.
    """
    loaded = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec not in _PLUGINS_LOADED:
            _import_plugin(spec)
            _PLUGINS_LOADED.append(spec)
        loaded.append(spec)
    return loaded


def loaded_plugins() -> list[str]:
    """The plugin specs imported so far in this process (to hand to Ray workers)."""
    return list(_PLUGINS_LOADED)


def _import_plugin(spec: str) -> None:
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"--plugin {spec}: no such file")
        name = f"varmem_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ConfigError(f"--plugin {spec}: importing it failed: {type(exc).__name__}: {exc}") from None
        return
    try:
        importlib.import_module(spec)
    except ImportError as exc:
        raise ConfigError(f"--plugin {spec}: cannot import it ({exc}); name a module on sys.path or a .py file") from None


def family_names() -> list[str]:
    """The registered family names."""
    _load_builtins()
    return sorted(_FAMILIES)


def family(name: str) -> Family:
    """The registered family ``name``; a ConfigError listing the known ones otherwise."""
    _load_builtins()
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be a family name (a string), got {name!r} ({type(name).__name__}); "
                          f"registered: {', '.join(sorted(_FAMILIES))}")
    if name not in _FAMILIES:
        raise ConfigError(
            f"model.name={name!r} is not a registered model family (registered: {', '.join(sorted(_FAMILIES))}); "
            f"a family outside varmem is loaded with --plugin MODULE_OR_FILE, the {PLUGINS_ENV} environment "
            f"variable, or the {ENTRY_POINT_GROUP!r} entry-point group of an installed package"
        )
    return _FAMILIES[name]


def family_of(config: FamilyConfig) -> Family:
    return family(type(config).family)


def model_config(section: dict[str, Any] | FamilyConfig | None) -> FamilyConfig:
    """The typed config of a ``model`` section: ``{"name": family, ...fields}`` (name defaults to vma)."""
    if isinstance(section, FamilyConfig):
        return section
    section = dict(section or {})
    name = section.get("name", "vma")
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be a family name, got {name!r}")
    cls = family(name).config
    try:
        return cls.from_dict(section)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"model: {exc}") from None


def build_model(config: FamilyConfig | dict[str, Any], image_shape) -> Any:
    """The model of a family config (or a ``model`` section dict) for images of ``image_shape``."""
    config = model_config(config)
    return family_of(config).build(config, image_shape)


def image_hw(image_shape) -> tuple[int, int]:
    """(H, W) from (H, W) or (1, H, W); a ValueError for anything else."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 3:
        if shape[0] != 1:
            raise ValueError(f"build_model: image_shape {shape} has {shape[0]} channels; the models are for 1-channel images")
        shape = shape[1:]
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"build_model: image_shape must be (H, W) or (1, H, W), got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]
