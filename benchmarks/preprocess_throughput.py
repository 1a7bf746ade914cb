"""Preprocessing throughput: reader + SR-GNN protocol + LESSR protocol on a synthetic ~1M-click
Diginetica-format file, against a straightforward row-by-row Python SR-GNN implementation.

    python benchmarks/preprocess_throughput.py [--clicks 1000000] [--seed 0] [--skip-python]

The file is synthetic but shaped like `train-item-views.csv`: ~5 clicks per session (geometric lengths),
power-law item popularity, session dates over 5 months, rows shuffled within each session (the real file
is not time-ordered within a session either). Both SR-GNN implementations must give identical output.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from sbr_bench.data.protocols import lessr_protocol, srgnn_protocol
from sbr_bench.data.readers import read_diginetica


def write_synthetic_diginetica(path: Path, n_clicks: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    n_sessions = n_clicks // 5
    lengths = rng.geometric(1 / 5, n_sessions)
    lengths = lengths[np.cumsum(lengths) <= n_clicks]
    n_sessions, n = len(lengths), int(lengths.sum())
    session = np.repeat(np.arange(1, n_sessions + 1), lengths)
    n_item_pool = 120_000
    popularity = 1.0 / np.arange(1, n_item_pool + 1) ** 0.9
    item = rng.permutation(n_item_pool)[rng.choice(n_item_pool, n, p=popularity / popularity.sum())] + 1
    day = np.sort(rng.integers(0, 150, n_sessions))  # session ids grow with time, as in the real file
    eventdate = (np.datetime64("2016-01-01") + day).astype(str)[session - 1]
    gaps = rng.exponential(60_000, n).astype(np.int64)
    cum = np.cumsum(gaps)
    timeframe = cum - np.repeat(cum[np.cumsum(lengths) - lengths], lengths)  # ms since session start
    shuffle = np.lexsort((rng.random(n), session))  # rows in random order within each session
    df = pd.DataFrame(
        {
            "sessionId": session[shuffle],
            "userId": "NA",
            "itemId": item[shuffle],
            "timeframe": timeframe[shuffle],
            "eventdate": eventdate[shuffle],
        }
    )
    df.to_csv(path, sep=";", index=False)
    return n


def python_srgnn(path: Path, test_days: int = 7):
    """SR-GNN's steps, one row and one dict at a time (csv module), for comparison."""
    clicks, last_date = {}, {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            sid = row["sessionId"]
            clicks.setdefault(sid, []).append((int(row["timeframe"]), row["itemId"]))
            last_date[sid] = row["eventdate"]
    sessions = {}
    for sid, seq in clicks.items():
        if len(seq) > 1:
            sessions[sid] = [item for _, item in sorted(seq, key=lambda c: c[0])]
    support = {}
    for seq in sessions.values():
        for item in seq:
            support[item] = support.get(item, 0) + 1
    dates = {}
    for sid in list(sessions):
        seq = [i for i in sessions[sid] if support[i] >= 5]
        if len(seq) < 2:
            del sessions[sid]
            continue
        sessions[sid] = seq
        day = datetime.strptime(last_date[sid], "%Y-%m-%d").replace(tzinfo=timezone.utc)
        dates[sid] = int(day.timestamp())
    split = max(dates.values()) - 86400 * test_days
    train_ids = sorted((s for s in dates if dates[s] < split), key=lambda s: dates[s])
    test_ids = sorted((s for s in dates if dates[s] > split), key=lambda s: dates[s])
    number, train = {}, []
    for sid in train_ids:
        out = []
        for item in sessions[sid]:
            if item not in number:
                number[item] = len(number) + 1
            out.append(number[item])
        train.append(out)
    test = []
    for sid in test_ids:
        out = [number[i] for i in sessions[sid] if i in number]
        if len(out) >= 2:
            test.append(out)
    return train, test, len(number)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-python", action="store_true", help="skip the row-by-row comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-item-views.csv"
        n, t_gen = timed(write_synthetic_diginetica, path, args.clicks, args.seed)
        size_mb = path.stat().st_size / 2**20
        print(f"synthetic file: {n:,} clicks, {size_mb:.1f} MiB, written in {t_gen:.1f} s")
        clicks, t_read = timed(read_diginetica, path)
        print(f"  sessions {clicks['session'].nunique():,}, items {clicks['item'].nunique():,}")
        srgnn, t_srgnn = timed(srgnn_protocol, clicks, "diginetica")
        lessr, t_lessr = timed(lessr_protocol, clicks, "diginetica")
        rows = [
            ("read_diginetica", t_read),
            ("srgnn_protocol", t_srgnn),
            ("lessr_protocol", t_lessr),
            ("read + srgnn", t_read + t_srgnn),
            ("read + lessr", t_read + t_lessr),
        ]
        if not args.skip_python:
            (train, test, n_items), t_py = timed(python_srgnn, path)
            same = (
                train == srgnn.train.to_lists() and test == srgnn.test.to_lists() and n_items == srgnn.n_items
            )
            rows.append(("row-by-row python srgnn", t_py))
        print(f"{'step':<26}{'seconds':>10}{'clicks/s':>14}")
        for name, seconds in rows:
            print(f"{name:<26}{seconds:>10.2f}{n / seconds:>14,.0f}")
        info = srgnn.info
        print(
            f"srgnn: {info['train_sessions']:,} train / {info['test_sessions']:,} test sessions, "
            f"{info['n_items']:,} items; lessr: {lessr.info['train_sessions']:,} / "
            f"{lessr.info['test_sessions']:,}, {lessr.info['n_items']:,} items"
        )
        if not args.skip_python:
            print(f"vectorised read+srgnn is {t_py / (t_read + t_srgnn):.1f}x faster than row-by-row python")
            print(f"identical output (train, test, n_items): {same}")
            if not same:
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
