"""Session-graph construction throughput: the vectorised collate vs PyG's per-example DataLoader path.

Usage: python benchmarks/graph_build.py [--size diginetica] [--batch-size 100] [--sample 20000]
Prints examples/second for both on the same examples, their ratio, and the projected graph-building time
for one training epoch of the chosen synthetic size.
"""

import argparse
import time

import numpy as np
from torch_geometric.loader import DataLoader

from sbr_bench.data.graphs import ExampleLoader, SessionGraphDataset, collate_examples
from sbr_bench.data.sessions import Split
from sbr_bench.data.synthetic import synthetic_dataset


def rate(fn, n):
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="diginetica")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--sample", type=int, default=20000, help="examples timed on the slow path")
    ap.add_argument("--extra", default="", help="comma-separated extra graphs, e.g. eop,shortcut (LESSR)")
    args = ap.parse_args()
    extra = tuple(e for e in args.extra.split(",") if e)
    ds = synthetic_dataset(args.size)
    train, n_items = ds.train, ds.n_items
    idx = np.random.default_rng(0).permutation(len(train))[: args.sample]
    sample = Split(train.sessions, train.ex_seq[idx], train.ex_len[idx])

    def fast():
        for b in range(0, len(sample), args.batch_size):
            collate_examples(sample, np.arange(b, min(b + args.batch_size, len(sample))), n_items, extra)

    def slow():
        for _ in DataLoader(SessionGraphDataset(sample, n_items, extra), batch_size=args.batch_size):
            pass

    def epoch():
        for _ in ExampleLoader(train, args.batch_size, n_items, shuffle=True, extra=extra).batches(0):
            pass

    r_fast, r_slow = rate(fast, len(sample)), rate(slow, len(sample))
    start = time.perf_counter()
    epoch()
    full = time.perf_counter() - start
    print(f"dataset synthetic:{args.size}: {len(train):,} training examples, {n_items:,} items, "
          f"batch {args.batch_size}, extra graphs {extra or 'none'}")
    print(f"vectorised collate      : {r_fast:12,.0f} examples/s")
    print(f"PyG per-example loader  : {r_slow:12,.0f} examples/s")
    print(f"ratio (vectorised / PyG): {r_fast / r_slow:12.1f}x")
    print(f"one full training epoch of graph building (vectorised): {full:.2f} s")


if __name__ == "__main__":
    main()
