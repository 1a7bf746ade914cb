"""Options shared by the commands, and their one translation into the library's `Experiment` settings."""

from __future__ import annotations

import json

from ..errors import UserError


def add_dataset_arguments(p, default="synthetic") -> None:
    """--dataset and how to prepare it; shared by run, sweep and dissect (recorded in the run config)."""
    p.add_argument("--dataset", default=default, help="dataset name (default: synthetic; synthetic:tiny is a "
                   "small one; see `sbr-bench datasets list`)")
    p.add_argument("--data-dir", help="where processed datasets are cached (default: datasets)")
    p.add_argument("--protocol", choices=("srgnn", "lessr"), help="preprocessing protocol for a raw source "
                   "(default: the dataset's own)")
    p.add_argument("--valid-fraction", type=float,
                   help="latest share of training sessions held out for validation (default: 0.1)")
    p.add_argument("--protocol-param", action="append", default=[], metavar="KEY=VALUE",
                   help="protocol parameter, e.g. strict=true (repeatable)")


def add_selection_argument(p) -> None:
    from ..runs import DEFAULT_SELECTION, SELECTIONS

    p.add_argument("--selection", choices=tuple(SELECTIONS), help="how the reported test numbers are chosen: "
                   f"refit | valid | literature (default: {DEFAULT_SELECTION}; see below)")


def add_set_argument(p, help_text: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def data_config(args, base=None):
    """The `DataConfig` of the dataset options, on top of `base` (e.g. from an experiment file)."""
    from ..experiment import DataConfig

    base = base or DataConfig()
    changes = {field: getattr(args, flag) for field, flag in (
        ("name", "dataset"), ("data_dir", "data_dir"), ("protocol", "protocol"),
        ("valid_fraction", "valid_fraction")) if getattr(args, flag, None) is not None}
    if getattr(args, "protocol_param", None):
        changes["params"] = dict(base.params, **dict(parse_key_values(args.protocol_param, "--protocol-param")))
    return DataConfig(**dict(base.spec(), **changes))


def parse_value(text: str):
    """A value on the command line: JSON (numbers, true/false, lists), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(items, flag: str):
    """KEY=VALUE strings -> (key, JSON-or-string value) pairs."""
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"{flag} {item}: expected KEY=VALUE (e.g. {flag} lr=0.001)")
        yield key, parse_value(value)


def split_sets(items) -> tuple[dict, dict]:
    """--set KEY=VALUE / MODEL.KEY=VALUE -> (overrides for every model, {model: overrides})."""
    common, scoped = {}, {}
    for key, value in parse_key_values(items, "--set"):
        model, dot, name = key.rpartition(".")
        if dot:
            scoped.setdefault(model, {})[name] = value
        else:
            common[name] = value
    return common, scoped
