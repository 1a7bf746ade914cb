"""Typed model parameters. Every model's parameters are a frozen dataclass next to the model, with the
defaults of its paper or reference code; neural models extend `TrainConfig`, the training settings shared
by the SR-GNN lineage. `check` validates a value against the field's type, so an unknown key or a wrong type
is one `ConfigError` naming the model and the key. Inside the trainer and the models a cfg is a plain dict
(`as_dict`): the dataclasses are the schema, the dicts what is recorded in config.json."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Training settings every neural model has (SR-GNN lineage: Adam, lr 1e-3 decayed 0.1 every 3 epochs)."""

    dim: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    l2: float = 1e-5
    lr_step: int = 3
    lr_decay: float = 0.1
    epochs: int = 30
    patience: int = 3
    optimizer: str = "adam"
    scheduler_at_start_compat: bool = False
    precision: str = "fp32"  # the scoring products' arithmetic: fp32 | tf32 (CUDA) | bf16 (models/scoring.py)


@dataclass(frozen=True)
class NoParams:
    """A model without parameters (pop, spop)."""


AT_LEAST_ONE = ("epochs", "batch_size", "dim")


def fields(config) -> dict[str, tuple[object, object]]:
    """{key: (type, default)} of a config dataclass (class or instance)."""
    hints = typing.get_type_hints(config if isinstance(config, type) else type(config))
    return {f.name: (hints[f.name], getattr(config, f.name) if not isinstance(config, type) else f.default)
            for f in dataclasses.fields(config)}


def as_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(name: str, defaults: dict, base: type | None = None):
    """A config dataclass instance for plain `defaults` (e.g. a plugin's), each key typed after its default
    value (float for a number with a decimal point, int, bool, str; any type for None), on top of `base`."""
    def kind(value):
        return typing.Any if value is None else type(value)

    for key, value in defaults.items():
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise ValueError(f"{name}: the default of {key!r} is a {type(value).__name__}; model parameters are "
                             "numbers, strings, booleans or None (what an experiment file and --set can give)")

    return _make(f"{name}Config", "types taken from the default values",
                 {k: (kind(v), v) for k, v in defaults.items()}, (base,) if base else ())


def compose(name: str, doc: str, *parts: tuple[object, tuple[str, ...] | None]):
    """A config with the fields of several configs: (config, keys or None for all), later ones winning."""
    merged = {}
    for config, keys in parts:
        merged.update({k: v for k, v in fields(config).items() if keys is None or k in keys})
    return _make(name, doc, merged)


def _make(name: str, doc: str, typed: dict, bases: tuple = ()):
    """An instance of a new frozen config dataclass with fields {key: (type, default)}."""
    made = dataclasses.make_dataclass(name, [(k, t, dataclasses.field(default=d)) for k, (t, d) in typed.items()],
                                      bases=bases, frozen=True, namespace={"__doc__": doc})
    return made()


def type_name(kind) -> str:
    args = typing.get_args(kind)
    if args and (typing.get_origin(kind) in (typing.Union, types.UnionType)):
        return " | ".join(type_name(a) for a in args)
    return "any" if kind is typing.Any else getattr(kind, "__name__", str(kind))


def describe(kind) -> str:
    """What a value of type `kind` is, in words (for errors): "a whole number", "true or false", ..."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(kind) if a is not type(None))
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a table"}
    return words.get(kind, type_name(kind))


def validate(instance, prefix: str = "") -> None:
    """Check every field of a (mutable) dataclass instance against its type hint, converting as `check`
    does (2.0 -> 2 for an int); a ConfigError names `prefix` + the field."""
    for key, (kind, value) in fields(instance).items():
        ok, converted = _accepts(kind, value)
        if not ok:
            raise ConfigError(prefix + key, f"expected {describe(kind)}", value)
        setattr(instance, key, converted)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _accepts(kind, value):
    """(ok, converted value) for one type: ints for int (2.0 becomes 2), numbers for float, exact bool/str."""
    if kind is typing.Any:
        return True, value
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        for member in typing.get_args(kind):
            ok, converted = _accepts(member, value)
            if ok:
                return True, converted
        return False, value
    if kind is type(None):
        return value is None, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        ok = _number(value) and math.isfinite(value) and value == int(value)
        return ok, int(value) if ok else value
    if kind is float:
        return _number(value) and math.isfinite(value), value
    return isinstance(value, kind), value


def check(model: str, key: str, value, kind, default):
    """`value` for parameter `key` of `model`, converted (2.0 epochs -> 2), or a ConfigError."""
    where = f"model_overrides.{model}.{key}"
    ok, converted = _accepts(kind, value)
    if not ok and _number(value) and not math.isfinite(value):  # JSON parsing accepts NaN and Infinity
        raise ConfigError(where, f"'{key}' must be a finite number", value)
    if not ok and kind is int and _number(value):
        raise ConfigError(where, f"'{key}' must be a whole number", value)
    if not ok:
        wanted = describe(kind) if kind in (int, float, bool) else type_name(kind)
        raise ConfigError(where, f"'{key}' is {wanted} (default {default!r})", value)
    if key in AT_LEAST_ONE and converted < 1:
        raise ConfigError(where, "must be at least 1", value)
    return converted
