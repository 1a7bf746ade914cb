"""Options shared by the commands, and their one translation into the library's `Experiment` settings."""

from __future__ import annotations

import json

from ..errors import UserError
from ..models.scoring import PRECISIONS


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


def add_experiment_arguments(p, folder: str, extra_models: str = "") -> None:
    """The options of an `Experiment` that run and tune share (read by `apply_options`); `folder` names what
    --runs-dir and --run-id place, `extra_models` the command's own --models shorthands."""
    p.add_argument("--models", help=f"all | anchors | {extra_models}comma-separated names | ENCODER+READOUT "
                   "(default: all)")
    add_dataset_arguments(p, default=None)
    add_selection_argument(p)
    p.add_argument("--runs-dir", help=f"where {folder} goes (default: runs)")
    p.add_argument("--seeds", type=int, help="number of seeds: 0..N-1 (default: 1)")
    p.add_argument("--seed-list", help="explicit comma-separated seeds, e.g. 0,3,7 (instead of --seeds)")
    p.add_argument("--epochs", type=int, help="epochs for every model (default: the model's own, capped "
                   "on synthetic data)")
    p.add_argument("--batch-size", type=int, help="training batch size for every model")
    p.add_argument("--device", help="auto | cpu | cuda[:k] (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, help="arithmetic of the scoring products "
                   "for every neural model: fp32 (default), tf32 (CUDA tensor cores) or bf16 (bfloat16 inputs, "
                   "float32 results); the same as --set precision=...")
    add_set_argument(p, "set a parameter for every model that has it, or MODEL.KEY=VALUE for one model "
                        "(repeatable; values are JSON, else strings)")
    p.add_argument("--run-id", help=f"name of {folder} under --runs-dir: letters, digits and ._-+=, not "
                   "starting with '.' (default: UTC timestamp + config hash)")


def seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seed-list {text}: expected comma-separated integers") from None


def apply_options(base, args):
    """`base` (an `Experiment`) with the experiment options given on the command line (run and tune;
    `add_experiment_arguments` defines them)."""
    changes = {"dataset": data_config(args, base.dataset)}
    if args.models is not None:
        if not args.models.replace(",", "").strip():
            raise UserError(f"--models {args.models!r}: no model named (use all for every model)")
        changes["models"] = args.models
    if args.seed_list:
        changes["seeds"] = seed_list(args.seed_list)
    elif args.seeds is not None:
        changes["seeds"] = args.seeds
    for name in ("epochs", "batch_size", "selection", "device", "run_id", "runs_dir", "checkpoint_every", "log"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.deterministic:
        changes["deterministic"] = True
    common, scoped = split_sets(args.set)
    if args.precision:
        common["precision"] = args.precision
    changes["overrides"] = dict(base.overrides, **common)
    changes["model_overrides"] = {name: dict(base.model_overrides.get(name, {}), **scoped.get(name, {}))
                                  for name in dict.fromkeys([*base.model_overrides, *scoped])}
    return base.replace(**changes)
