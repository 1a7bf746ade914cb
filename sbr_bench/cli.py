"""`sbr-bench` entry point. Each sub-command lives in `sbr_bench/commands/<name>.py` and provides
`HELP`, `add_arguments(parser)` and `main(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

COMMANDS = ["run", "reproduce", "datasets", "dissect", "sweep", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbr-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"sbr_bench.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .env import keep_freed_memory

    keep_freed_memory()  # before any large tensor is allocated; recorded in env.json
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"sbr-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sbr-bench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
