"""Our kNN and rule anchors against session-rec's own implementations, on session-rec's rsc15 100k split.

session-rec (rn5l/session-rec) is not a dependency: give the path of a checkout with --session-rec. Its
algorithm classes are fitted on the split's train_full file and evaluated with its protocol (every click
of a test session but the first, predicted from the session so far, against every training item). Each
target's rank is counted tie-aware from session-rec's scores (optimistic: 1 + #greater; pessimistic: +
#equal), exactly as our evaluator does, so equal scores give equal numbers; the numbers session-rec's own
loop reports (ties in pandas' sort order) are printed beside them. Ours: the same models by name, fitted
on train + validation (= train_full) of `sbr-bench datasets prepare rsc15-100k --from <split folder>`.

    python benchmarks/sessionrec_check.py --session-rec PATH/session-rec [--models sr,ar] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

SPLIT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "yoochoose" / "sessionrec_rsc15_100k"
VSKNN = dict(sample_size=1000, similarity="vec", weighting="div", weighting_score="div", remind=True)
# check -> (our model, its parameters, session-rec module, class, its keyword arguments: the same settings).
# A `-allk` check keeps every candidate as a neighbour (k = sample size): no tie at the k-th neighbour
# decides which sessions vote, so both sides must give the same numbers; with k = 100 they may differ by
# which of the equally similar sessions make the cut (session-rec: set iteration order; ours: recency).
ALGORITHMS = {
    "sr": ("sr", {}, "algorithms/baselines/sr.py", "SequentialRules", dict(steps=10, weighting="div", pruning=20)),
    "ar": ("ar", {}, "algorithms/baselines/ar.py", "AssociationRules", dict(pruning=20)),
    "sknn": ("sknn", {}, "algorithms/knn/sknn.py", "ContextKNN", dict(k=100, sample_size=500, similarity="cosine")),
    "sknn-allk": ("sknn", {"k": 500}, "algorithms/knn/sknn.py", "ContextKNN", dict(k=500, sample_size=500,
                                                                               similarity="cosine")),
    "vsknn": ("vsknn", {}, "algorithms/knn/vsknn.py", "VMContextKNN", dict(k=100, **VSKNN)),
    "vsknn-allk": ("vsknn", {"k": 1000}, "algorithms/knn/vsknn.py", "VMContextKNN", dict(k=1000, **VSKNN)),
    "stan": ("stan", {}, "algorithms/knn/stan.py", "STAN", dict(k=100, sample_size=5000, lambda_spw=1.02, lambda_snh=5,
                                                                lambda_inh=2.05, remind=True)),
    "vstan": ("vstan", {}, "algorithms/knn/vstan.py", "VSKNN_STAN", dict(k=100, sample_size=5000, lambda_spw=1.02,
                                                                         lambda_snh=5, lambda_inh=2.05, lambda_ipw=1.02,
                                                                         lambda_idf=5, remind=True)),
    # SeqFilterContextKNN is not in session-rec's current tree: its filter, written out below, on its ContextKNN.
    "sfsknn": ("sfsknn", {}, "algorithms/knn/sknn.py", "ContextKNN", dict(k=100, sample_size=1000, similarity="cosine")),
}


class SequenceFilter:
    """SeqFilterContextKNN: a kNN's scores kept only for items that directly followed the input item in
    some training session."""

    def __init__(self, knn):
        self.knn = knn

    def fit(self, data):
        self.knn.fit(data)
        same = data["SessionId"].values[1:] == data["SessionId"].values[:-1]
        before, after = data["ItemId"].values[:-1][same], data["ItemId"].values[1:][same]
        self.followed_by = pd.DataFrame({"a": before, "b": after}).groupby("a")["b"].apply(set).to_dict()

    def predict_next(self, session_id, input_item_id, predict_for_item_ids, timestamp=0):
        preds = self.knn.predict_next(session_id, input_item_id, predict_for_item_ids, timestamp=timestamp)
        preds[~np.isin(predict_for_item_ids, list(self.followed_by.get(input_item_id, ())))] = 0
        return preds


def load_class(root: Path, module: str, name: str):
    for missing in ("pympler", "psutil"):  # imported at the top of some modules, unused by fit/predict
        sys.modules.setdefault(missing, types.ModuleType(missing))
    sys.modules["pympler"].asizeof = None
    if not hasattr(np, "in1d"):  # session-rec targets numpy 1 and Python < 3.8
        np.in1d = np.isin
    if not hasattr(time, "clock"):
        time.clock = time.perf_counter
    spec = importlib.util.spec_from_file_location(name, root / module)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def sessionrec_ranks(model, train: pd.DataFrame, test: pd.DataFrame):
    """(optimistic, pessimistic, session-rec's own) rank of every predicted click."""
    items = train["ItemId"].unique()
    test = test.sort_values(["SessionId", "Time"], kind="stable")
    sids, iids, times = test["SessionId"].values, test["ItemId"].values, test["Time"].values
    opt, pes, own = [], [], []
    for i in range(1, len(test)):
        if sids[i] != sids[i - 1]:
            continue
        preds = model.predict_next(sids[i], iids[i - 1], items, timestamp=times[i])
        preds[np.isnan(preds)] = 0
        values, target = preds.values, preds[iids[i]]
        greater, equal = int((values > target).sum()), int((values == target).sum())
        opt.append(1 + greater)
        pes.append(greater + equal)
        ranked = preds.sort_values(ascending=False)  # session-rec's evaluation loop
        own.append(ranked.index.get_loc(iids[i]) + 1)
    return np.array(opt), np.array(pes), np.array(own)


def main() -> int:
    from sbr_bench import load_dataset
    from sbr_bench.evaluate import metrics_from_ranks
    from sbr_bench.models.registry import build_model
    from sbr_bench.training import evaluate_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--session-rec", required=True, type=Path, help="a checkout of rn5l/session-rec")
    p.add_argument("--split", type=Path, default=SPLIT, help="the rsc15 100k split (default: ../shared)")
    p.add_argument("--models", default=",".join(ALGORITHMS))
    p.add_argument("--data-dir", default="datasets")
    p.add_argument("--json", type=Path, help="also write the numbers here (as tests/data/sessionrec_rsc15_100k.json)")
    p.add_argument("--commit", default="unknown", help="the session-rec commit of the checkout, for the record")
    args = p.parse_args()

    read = lambda name: pd.read_csv(args.split / f"yoochoose-clicks-100k_{name}.txt", sep="\t")  # noqa: E731
    train, test = read("train_full"), read("test")
    ours_data = load_dataset(str(args.split), data_dir=args.data_dir)
    rows = {}
    for name in args.models.split(","):
        our_name, our_params, module, cls, kwargs = ALGORITHMS[name]
        theirs = load_class(args.session_rec, module, cls)(**kwargs)
        if name == "sfsknn":
            theirs = SequenceFilter(theirs)
        start = time.perf_counter()
        theirs.fit(train.copy())
        opt, pes, own = sessionrec_ranks(theirs, train, test)
        their_s = time.perf_counter() - start
        ours, _ = build_model(our_name, ours_data.n_items, our_params)
        start = time.perf_counter()
        ours.fit(ours_data.train_and_valid())
        result = evaluate_split(ours, ours_data.test, ours_data.n_items, "cpu")
        our_s = time.perf_counter() - start
        tie_aware = metrics_from_ranks(opt, pes)
        reported = metrics_from_ranks(own)
        rows[name] = {"session-rec tie-aware": {k: tie_aware[k] for k in ("HR@20", "MRR@20")},
                      "session-rec as it reports": {k: reported[k] for k in ("HR@20", "MRR@20")},
                      "ours": {k: result.metrics[k] for k in ("HR@20", "MRR@20")},
                      "predictions": [len(opt), len(result.ranks_optimistic)], "seconds": [their_s, our_s]}
        r = rows[name]
        print(f"{name}: session-rec HR@20 {r['session-rec tie-aware']['HR@20']:.2f} MRR@20 "
              f"{r['session-rec tie-aware']['MRR@20']:.2f} (its own loop: {reported['HR@20']:.2f} / "
              f"{reported['MRR@20']:.2f}); ours {r['ours']['HR@20']:.2f} / {r['ours']['MRR@20']:.2f}; "
              f"{len(opt)} vs {len(result.ranks_optimistic)} predictions; fit + evaluation {their_s:.1f} s vs "
              f"{our_s:.1f} s", flush=True)
    if args.json:
        kwargs = "; ".join(f"{n}: {ALGORITHMS[n][3]}({', '.join(f'{k}={v!r}' for k, v in ALGORITHMS[n][4].items())})"
                           + (" under SequenceFilter (SeqFilterContextKNN's filter)" if n == "sfsknn" else "")
                           for n in rows)
        record = {"source": f"rn5l/session-rec at commit {args.commit}: {kwargs}, fitted on "
                            "yoochoose-clicks-100k_train_full.txt and evaluated with the protocol of its "
                            "evaluation/evaluation.py on yoochoose-clicks-100k_test.txt (../shared/datasets/"
                            "yoochoose/sessionrec_rsc15_100k)",
                  "command": "python benchmarks/sessionrec_check.py --session-rec PATH --commit SHA --json FILE",
                  "ties": "'session-rec tie-aware' ranks each target among session-rec's own scores as our "
                          "evaluator does (expected rank under uniformly random tie-breaking); 'session-rec as "
                          "it reports' is its loop's pandas sort order",
                  "models": {n: {k: v for k, v in r.items() if k != "seconds"} for n, r in rows.items()}}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
