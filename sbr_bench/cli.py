"""`sbr-bench` entry point. Each sub-command lives in `sbr_bench/commands/<name>.py` and provides
`HELP`, `add_arguments(parser)` and `main(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ConfigError, UserError

COMMANDS = ["run", "tune", "reproduce", "datasets", "models", "dissect", "sweep", "report"]
DESCRIPTION = """\
sbr-bench trains and evaluates session-based recommendation models (GNNs such as SR-GNN and
Atten-Mixer, their readouts composed with any encoder, and the kNN, rule, RNN and attention anchors)
on public datasets with their published protocols or on your own click log, with seeds, leak-free
model selection, tie-aware metrics, per-phase timing and exact resume; it tunes every model under one
budget, dissects weights with SparseVD, and rebuilds the paper's tables and figures from the runs."""
EPILOG = """\
examples:
  sbr-bench run --models all                      every model on the built-in synthetic dataset
  sbr-bench run --models srgnn,attenmixer --dataset diginetica --seeds 5
  sbr-bench report --out reports/mine             tables and figures from runs/
  sbr-bench COMMAND --help                        the options of one command

documentation: README.md and docs/ (guide.md, tuning.md, reproducing.md, api.md)"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sbr-bench", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sbr-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"sbr_bench.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


# Experiment settings (`ConfigError.key`) -> the option that sets them.
OPTIONS = {
    "models": "--models", "seeds": "--seeds", "epochs": "--epochs", "batch_size": "--batch-size",
    "selection": "--selection", "device": "--device", "deterministic": "--deterministic",
    "checkpoint_every": "--checkpoint-every", "runs_dir": "--runs-dir", "run_id": "--run-id", "log": "--log",
    "engine": "--engine", "dataset": "--dataset", "dataset.name": "--dataset", "dataset.data_dir": "--data-dir",
    "dataset.protocol": "--protocol", "dataset.valid_fraction": "--valid-fraction",
    "dataset.params": "--protocol-param", "paper": "--paper", "address": "--address", "resume": "--resume",
    "raw": "--raw", "paths": "--paths", "session_col": "--session-col", "item_col": "--item-col",
    "time_col": "--time-col", "tune.budget": "--budget", "tune.budget_hours": "--budget-hours",
    "tune.sampler": "--sampler", "tune.pruner": "--pruner", "tune.storage": "--storage",
    "tune.study_seed": "--study-seed", "tune.patience": "--patience",
}


def as_option(error: ConfigError, args) -> str:
    """A library ConfigError in the words of the command line: the option that sets the key, or, for a
    setting that came from an experiment file and no option, the file and its key."""
    has_value = error.value is not ConfigError.NO_VALUE
    scope, _, rest = error.key.partition(".")
    if scope in ("overrides", "model_overrides"):
        flag, given = _set_option(scope, rest, error.value if has_value else "...", getattr(args, "set", None) or [])
    else:
        key = error.key
        option = "--seed-list" if key == "seeds" and getattr(args, "seed_list", None) else OPTIONS.get(key, key)
        flag = option + (f" {error.value}" if has_value else "")
        given = getattr(args, option.lstrip("-").replace("-", "_"), None) not in (None, [], False)
    if error.source:
        return str(error)
    if getattr(args, "config", None) and not given:
        return f"{args.config}: {error}"
    return f"{flag}: {error.message}"


def _set_option(scope: str, rest: str, shown, items: list) -> tuple[str, bool]:
    """The `--set` spelling of `overrides.KEY` or `model_overrides.MODEL[.KEY]`, and whether --set gave it:
    MODEL.KEY when the option was scoped to the model (or no key is named), else KEY."""
    model, _, param = rest.partition(".") if scope == "model_overrides" else (None, "", rest)
    keys = {item.partition("=")[0] for item in items}
    scoped = model is not None and (not param or f"{model}.{param}" in keys)
    name = f"{model}.{param or 'KEY'}" if scoped else param
    return f"--set {name}={shown}", scoped or param in keys


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .env import keep_freed_memory

    keep_freed_memory()  # before any large tensor is allocated; recorded in env.json
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"sbr-bench {args.command}: error: {as_option(e, args)}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"sbr-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sbr-bench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
