"""Typed, frozen configs from plain data: the one deep merge and the one strict builder used by
the CLI, presets, benchmarks and services alike.

A config is a frozen dataclass whose fields may be other config dataclasses. `from_mapping` builds
one from JSON-like data, recursing into nested configs; an unknown key is a ConfigError naming its
full path, and so is a value the dataclass rejects. `deep_merge` layers overrides: nested mappings
merge key by key, anything else replaces.

>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Inner:
...     a: int = 1
...     b: int = 2
>>> @dataclass(frozen=True)
... class Outer:
...     inner: Inner = field(default_factory=Inner)
...     name: str = "x"
>>> override(Outer(), {"inner": {"b": 5}})
Outer(inner=Inner(a=1, b=5), name='x')
>>> from_mapping(Outer, {"inner": {"c": 1}}, "run.json")
Traceback (most recent call last):
...
g2rec.errors.ConfigError: run.json: inner: unknown key 'c'; known: a, b
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from g2rec.errors import ConfigError

T = TypeVar("T")


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `over` laid on top; where both hold a mapping, they merge.

    >>> deep_merge({"m": {"a": 1, "b": 2}, "k": 1}, {"m": {"b": 3}})
    {'m': {'a': 1, 'b': 3}, 'k': 1}
    """
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _config_type(field: dataclasses.Field, annotation: Any) -> type | None:
    """The dataclass a field holds (also inside `X | None`), else None."""
    if field.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(made := field.default_factory()):
        return type(made)
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build config dataclass `cls` from plain data, strictly (see the module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"expected a mapping, got {type(data).__name__}")
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # a class defined where its annotations cannot be resolved (a doctest)
        hints = {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    known = list(fields)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(where, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                 f"known: {', '.join(known)}")
    kwargs = {}
    for name, value in data.items():
        sub = _config_type(fields[name], hints.get(name))
        kwargs[name] = from_mapping(sub, value, f"{where}: {name}") if sub and isinstance(value, Mapping) else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(where, str(e)) from e


def to_mapping(config: Any) -> dict[str, Any]:
    """Plain data (JSON-ready) of a config dataclass, nested configs included."""
    return dataclasses.asdict(config)


def override(config: T, over: Mapping[str, Any], where: str = "overrides") -> T:
    """`config` with `over` deep-merged on top, rebuilt and checked like `from_mapping`."""
    return from_mapping(type(config), deep_merge(to_mapping(config), over), where)
