"""Full-ranking evaluation throughput, two comparisons (`--compare`):

- `loop`: `sbr_bench.evaluate.evaluate`'s dense path against the previous evaluation loop (kept below as
  `reference_evaluate`: a fresh [B, N] score matrix per batch, two [B, N] boolean temporaries for the
  greater/equal counts, and a device-to-host copy per batch);
- `sparse`: for the baselines with `sparse_scores` (pop, spop and the kNN and rule anchors), the dense
  path (`evaluate(..., sparse=False)`) against the sparse path (ranks from the candidate rows and the
  background score of all other items).

    python benchmarks/eval_throughput.py [--compare loop|sparse] [--dataset gowalla | PATH]
                                         [--models srgnn,pop,spop,sknn] [--limit 20000] [--repeats 3]
                                         [--batch-size 500] [--threads 1]

Same model (untrained neural models: random weights, the speed does not depend on them; baselines are
fitted on the training split), same split, same batches; the two variants run interleaved in one
process, and the medians are printed: examples/s, user and system CPU seconds, minor page faults, and
the second/first speed ratio. Both must give identical optimistic and pessimistic ranks (checked; the
exit status is 1 otherwise). The data are the real test split when `--dataset` is a prepared dataset
folder (or a name prepared under `--data-dir`), else `synthetic:diginetica`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sbr_bench.data.dataset import load_dataset
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Split
from sbr_bench.evaluate import MAX_SCORE_CELLS, evaluate
from sbr_bench.models.registry import build_model


@torch.no_grad()
def reference_evaluate(model, split, n_items, batch_size=500, device="cpu"):
    """The evaluation loop before reuse of score buffers: (optimistic, pessimistic) ranks."""
    model.eval()
    opt = np.empty(len(split), dtype=np.int64)
    pes = np.empty(len(split), dtype=np.int64)
    chunk = max(1, min(n_items, MAX_SCORE_CELLS // max(batch_size, 1)))
    for b0 in range(0, len(split), batch_size):
        idx = np.arange(b0, min(b0 + batch_size, len(split)))
        batch = collate_examples(split, idx, n_items, tuple(getattr(model, "extra_graphs", ()))).to(device)
        if hasattr(model, "session_repr"):
            s, items, _ = model.session_repr(batch)
            score = lambda c0, c1: model.scorer(s, items[c0:c1])  # noqa: E731
        else:
            full = model(batch)
            score = lambda c0, c1: full[:, c0:c1]  # noqa: E731
        target0 = batch.y - 1
        rows = torch.arange(len(idx), device=target0.device)
        bounds = [(c0, min(c0 + chunk, n_items)) for c0 in range(0, n_items, chunk)]
        target = torch.empty(len(idx), dtype=torch.float64, device=target0.device)
        for c0, c1 in bounds:  # (one chunk at real catalogue sizes with batch 500)
            inside = (target0 >= c0) & (target0 < c1)
            if inside.any():
                sc = score(c0, c1)
                target = target.to(sc.dtype)
                target[inside] = sc[rows[inside], target0[inside] - c0]
        greater = torch.zeros(len(idx), dtype=torch.long, device=target0.device)
        equal = torch.zeros_like(greater)
        t = target.unsqueeze(1)
        for c0, c1 in bounds:
            sc = score(c0, c1)
            greater += (sc > t).sum(1)
            equal += (sc == t).sum(1)
        finite = torch.isfinite(target).cpu().numpy()
        g, e = greater.cpu().numpy(), (equal - 1).clamp_min(0).cpu().numpy()
        opt[idx] = np.where(finite, 1 + g, n_items)
        pes[idx] = np.where(finite, 1 + g + e, n_items)
    return opt, pes


def dense_evaluate(model, split, n_items, batch_size=500, device="cpu"):
    res = evaluate(model, split, n_items, batch_size=batch_size, device=device, sparse=False)
    return res.ranks_optimistic, res.ranks_pessimistic


def sparse_evaluate(model, split, n_items, batch_size=500, device="cpu"):
    res = evaluate(model, split, n_items, batch_size=batch_size, device=device, sparse=True)
    return res.ranks_optimistic, res.ranks_pessimistic


# (first, second) variant of each comparison, and the models it runs by default
COMPARISONS = {
    "loop": ((("old", reference_evaluate), ("new", dense_evaluate)), "srgnn,pop,spop,sknn"),
    "sparse": ((("dense", dense_evaluate), ("sparse", sparse_evaluate)), "pop,spop,sknn,vsknn,stan,vstan,sfsknn,sr,ar"),
}


def measured(fn, *args):
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn(*args)
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return out, dict(wall=w1 - w0, user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime,
                     faults=r1.ru_minflt - r0.ru_minflt)


def subset(split: Split, limit: int | None) -> Split:
    """The first `limit` examples (a fixed subset, for quick runs)."""
    if not limit or limit >= len(split):
        return split
    return Split(split.sessions, split.ex_seq[:limit], split.ex_len[:limit])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", default="loop", choices=tuple(COMPARISONS))
    ap.add_argument("--dataset", default="gowalla", help="a name prepared under --data-dir, or a dataset folder")
    ap.add_argument("--data-dir", default="datasets")
    ap.add_argument("--models", default=None, help="comma-separated registry names (default: the comparison's)")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    variants, default_models = COMPARISONS[args.compare]
    name = args.dataset
    if not name.startswith("synthetic") and not (Path(name).exists() or (Path(args.data_dir) / name).exists()):
        print(f"{name} is not prepared under {args.data_dir}: using synthetic:diginetica")
        name = "synthetic:diginetica"
    ds = load_dataset(name, data_dir=args.data_dir)
    split = subset(getattr(ds, args.split), args.limit)
    print(f"{name} {args.split}: {len(split):,} examples, {ds.n_items:,} items, batch {args.batch_size}, "
          f"{args.repeats} interleaved repeats, medians")

    ok = True
    (first, _), (second, _) = variants
    for model_name in (args.models or default_models).split(","):
        model, _ = build_model(model_name, ds.n_items)
        fit = 0.0
        if getattr(model, "trainable", True) is False:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # stan on data without session times says so once
                model.fit(ds.train)
            fit = time.perf_counter() - start
        elif hasattr(model, "prepare"):
            model.prepare(ds.train)
        runs = {label: [] for label, _ in variants}
        ranks = {}
        for _ in range(args.repeats):
            for label, fn in variants:
                ranks[label], m = measured(fn, model, split, ds.n_items, args.batch_size)
                runs[label].append(m)
        same = all(np.array_equal(a, b) for a, b in zip(ranks[first], ranks[second]))
        ok &= same
        med = {k: {f: float(np.median([r[f] for r in v])) for f in v[0]} for k, v in runs.items()}
        for label, _ in variants:
            m = med[label]
            print(f"  {model_name:8s} {label:>6s}: {len(split) / m['wall']:9.0f} ex/s  wall {m['wall']:7.2f}s  "
                  f"user {m['user']:6.2f}s  sys {m['sys']:6.2f}s  minor faults {m['faults']:9.0f}")
        cpu = {k: med[k]["user"] + med[k]["sys"] for k in med}
        print(f"  {model_name:8s} {second}/{first} speed: wall x{med[first]['wall'] / med[second]['wall']:.2f}, "
              f"CPU x{cpu[first] / max(cpu[second], 1e-9):.2f}; fit {fit:.2f}s; identical ranks: {same}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
