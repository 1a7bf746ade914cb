"""Search spaces for tuning, declared next to each model's defaults (its SPECS entry, `space=`).

A space maps parameter names to one of three typed ranges: `Float(low, high, log)`, `Int(low, high, log)`
or `Choice(values)`. `sbr_bench.tuning` hands them to Optuna (`suggest`); `models show NAME` prints them
(`describe`); an experiment file overrides them under `[tune.space.MODEL]` (`parse`): a table
`{low = .., high = .., log = true}` is a range (whole-number bounds for an int parameter), a list a choice.
Every model's default lies in its space, so a study can start from the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from . import config


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial, name: str):
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        return config._number(value) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"{self.low:g} .. {self.high:g}" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False

    def suggest(self, trial, name: str):
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        return config._number(value) and value == int(value) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"{self.low} .. {self.high} (whole numbers" + (", log)" if self.log else ")")


@dataclass(frozen=True)
class Choice:
    values: tuple

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.values))

    def contains(self, value) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


# Shared by the SR-GNN lineage: the learning rates and weight decays their papers searched (SR-GNN,
# GC-SAN, SGNN-HN: lr around 1e-3, l2 in 1e-6..1e-3). l2 is a choice so that 0 (no decay) is in it.
LR = Float(1e-4, 1e-2, log=True)
L2 = Choice((0.0, 1e-6, 1e-5, 1e-4, 1e-3))


def dims(default: int) -> Choice:
    """Half, the default and twice the embedding size of a model's paper."""
    return Choice((default // 2, default, default * 2))


def check_space(model: str, space: dict, defaults) -> dict:
    """`space` checked against the model's parameters: every key a parameter, ranges of the parameter's
    type (Int for int; Float, or Int bounds made Float, for float), choices of valid values. Returns the
    checked space; a ConfigError names model and key."""
    params, checked = config.fields(defaults), {}
    for key, dist in space.items():
        where = f"tune.space.{model}.{key}"
        if key not in params:
            raise ConfigError(where, f"'{model}' has no parameter '{key}'; it has: {', '.join(sorted(params)) or 'none'}")
        kind, default = params[key]
        if isinstance(dist, Choice):
            if not dist.values:
                raise ConfigError(where, "a choice needs at least one value", [])
            try:
                checked[key] = Choice(tuple(config.check(model, key, v, kind, default) for v in dist.values))
            except ConfigError as e:
                raise ConfigError(where, e.message, e.value) from None
            continue
        if not isinstance(dist, (Int, Float)):
            raise ConfigError(where, "expected Float, Int or Choice", dist)
        if kind is float and isinstance(dist, Int):
            dist = Float(float(dist.low), float(dist.high), dist.log)
        if kind is not {Int: int, Float: float}[type(dist)]:
            raise ConfigError(where, f"'{key}' is {config.describe(kind)}: a range does not fit it; use a list "
                              "of values" + (" or whole-number bounds" if kind is int else ""), dist.describe())
        if not (math.isfinite(dist.low) and math.isfinite(dist.high) and dist.low < dist.high):
            raise ConfigError(where, "expected finite bounds with low < high", dist.describe())
        if dist.log and dist.low <= 0:
            raise ConfigError(where, "a log range needs low > 0", dist.describe())
        checked[key] = dist
    return checked


def parse(model: str, table: dict) -> dict:
    """A space from an experiment file's `[tune.space.MODEL]` table, whose values may also be ranges
    already (checked later with `check_space`)."""
    if not isinstance(table, dict):
        raise ConfigError(f"tune.space.{model}", "expected a table of parameter = range or list", table)
    space = {}
    for key, value in table.items():
        where = f"tune.space.{model}.{key}"
        if isinstance(value, (Float, Int, Choice)):
            space[key] = value
        elif isinstance(value, list):
            space[key] = Choice(tuple(value))
        elif isinstance(value, dict) and {"low", "high"} <= set(value) and set(value) <= {"low", "high", "log"}:
            low, high, log = value["low"], value["high"], value.get("log", False)
            if not (config._number(low) and config._number(high) and isinstance(log, bool)):
                raise ConfigError(where, "low and high are numbers, log is true or false", value)
            whole = all(isinstance(v, int) for v in (low, high))
            space[key] = Int(low, high, log) if whole else Float(float(low), float(high), log)
        else:
            raise ConfigError(where, "expected a list of values or a table {low = .., high = .., log = false}", value)
    return space


def as_toml(space: dict) -> dict:
    """The inverse of `parse`, for the recorded experiment file."""
    return {key: list(d.values) if isinstance(d, Choice) else {"low": d.low, "high": d.high, "log": d.log}
            for key, d in space.items()}
