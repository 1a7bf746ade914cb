"""`sbr-bench datasets list|prepare|stats`: what datasets exist, build their cached splits, Table 1."""

from __future__ import annotations

import json

from ..errors import UserError

HELP = "list datasets, prepare (preprocess and cache) one, or print its Table-1 statistics"

STAT_ROWS = [
    ("clicks", "No. of clicks"),
    ("sessions", "No. of sessions (prefix examples, train + valid + test)"),
    ("items", "No. of items (distinct, in the splits)"),
    ("avg_length", "Average length (clicks per whole session)"),
    ("whole_sessions", "Whole sessions"),
    ("n_items", "Item id space (1..n_items)"),
    ("train_examples", "Train examples"),
    ("valid_examples", "Validation examples"),
    ("test_examples", "Test examples"),
]


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="datasets that a name can select, with their cache state")
    _common(ls)

    prep = sub.add_parser("prepare", help="preprocess a dataset and cache its splits")
    prep.add_argument("name", help="synthetic[:SIZE], a source (diginetica, gowalla, lastfm, yoochoose), "
                                   "a path, or the NAME to import --from PATH under")
    prep.add_argument("--from", dest="from_path", metavar="PATH",
                      help="import a preprocessed folder (SR-GNN pickles, LESSR text, session-rec TSV) or a "
                           "click-log CSV under NAME")
    prep.add_argument("--refresh", action="store_true", help="rebuild the cached splits even if present")
    _load_options(prep)

    st = sub.add_parser("stats", help="print the Table-1 statistics of a dataset")
    st.add_argument("name", help="a dataset name (see `sbr-bench datasets list`) or a path")
    st.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    _load_options(st)


def _common(p) -> None:
    p.add_argument("--data-dir", default="datasets", help="where raw files and caches live (default: datasets)")


def _load_options(p) -> None:
    _common(p)
    p.add_argument("--raw", metavar="FILE", help="the raw file of a source (default: its raw folder)")
    p.add_argument("--protocol", choices=["srgnn", "lessr"], help="preprocessing protocol for raw data")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="latest fraction of training sessions held out for validation (default 0.1)")
    p.add_argument("--seed", type=int, help="seed of synthetic data")
    p.add_argument("--session-col", help="click log: name of the session column")
    p.add_argument("--item-col", help="click log: name of the item column")
    p.add_argument("--time-col", help="click log: name of the time column (unix seconds or ISO-8601)")
    p.add_argument("--delimiter", help="click log: field delimiter (default ','; 'tab' for TAB)")
    p.add_argument("--id-base", type=int, choices=[0, 1], help="LESSR text: force 0- or 1-based ids")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a protocol parameter (repeatable), value parsed as JSON when possible")


def _params(args) -> dict:
    params = {}
    for flag in ("seed", "session_col", "item_col", "time_col", "id_base"):
        value = getattr(args, flag, None)
        if value is not None:
            params[flag] = value
    if getattr(args, "delimiter", None) is not None:
        params["delimiter"] = "\t" if args.delimiter.lower() in ("tab", "\\t") else args.delimiter
    for item in getattr(args, "param", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--param expects KEY=VALUE, got '{item}'")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _prepare(args, source_path=None):
    from ..data.dataset import prepare_dataset

    return prepare_dataset(args.name, args.data_dir, protocol=args.protocol, valid_fraction=args.valid_fraction,
                           raw=args.raw, refresh=getattr(args, "refresh", False), source_path=source_path,
                           **_params(args))


def format_stats(stats: dict) -> str:
    width = max(len(label) for _, label in STAT_ROWS)
    lines = [f"Dataset: {stats['dataset']}"]
    for key, label in STAT_ROWS:
        value = stats[key]
        text = f"{value:.2f}" if isinstance(value, float) else f"{value:,}"
        lines.append(f"  {label:<{width}}  {text:>12}")
    return "\n".join(lines)


def main(args) -> int:
    if args.action == "list":
        from ..data.dataset import list_datasets

        rows = list_datasets(args.data_dir)
        w_name = max(len(r["name"]) for r in rows)
        w_kind = max(len(r["kind"]) for r in rows)
        w_status = max(len(r["status"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{w_name}}  {r['kind']:<{w_kind}}  {r['status']:<{w_status}}  {r['detail']}")
        return 0
    if args.action == "prepare":
        prepared = _prepare(args, source_path=args.from_path)
        where = prepared.cache_path if prepared.cache_path else "(synthetic: generated, not cached)"
        print(f"{'cached' if prepared.from_cache else 'prepared'} {prepared.dataset.name}: {where}")
        print(format_stats(prepared.dataset.stats()))
        return 0
    stats = _prepare(args).dataset.stats()
    print(json.dumps(stats) if args.json else format_stats(stats))
    return 0
