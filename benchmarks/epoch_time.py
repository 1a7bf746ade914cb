"""Epoch time of every trainable model against the scoring bound, in one run on the same data and machine.

Usage: python benchmarks/epoch_time.py --dataset diginetica|gowalla|synthetic:diginetica [--subset 20000]
       [--models narm,srgnn,...] [--threads 1] [--repeats 1] [--python /other/venv/bin/python ...]
       [--compare-torch-scatter]

For each model: one training epoch as `sbr-bench run` trains it (sbr_bench.training.train_model with
max_epochs=1, validation pass, no test), then prints epoch train time, examples/s, the data / forward /
backward+step / eval seconds, peak memory, the scoring-bound time (the three products s@E^T, G@E, G^T@s
alone for that model's batch sizes, dim and item count; see sbr_bench/profiling.py) and train/bound, plus
the Atten-Mixer / SR-GNN epoch-time ratio.

- Every model trains in its own fresh subprocess (same interpreter, same data file written once by this
  process), so peak memory is per model: the child's peak RSS (Linux VmHWM, reset after the data is
  loaded), shown with the part above the RSS at the model's start; one model's caches do not slow the next.
- --subset N: the first N of a fixed seeded permutation of the training examples (the item catalogue is
  always complete, so every score is over all items); validation is cut the same way (--valid-subset,
  default N/4). Without --subset: the complete splits.
- --python PATH (repeatable): also run every model under another interpreter (e.g. a venv with
  torch-scatter), interleaved model by model with this one; the table gets one row per interpreter and a
  per-model time ratio against this one.
- --compare-torch-scatter: run every model twice under this interpreter (which must have torch-scatter),
  once with the torch_scatter import blocked (so PyG falls back to its torch-only paths), interleaved;
  the children also count the calls PyG routes to torch-scatter.
- --repeats R: run every (model, variant) R times, interleaved in alternating order (ABBA), and keep the
  run with the median train time (on a shared machine timings drift; the bound, timed in the same child
  right after the epoch, drifts with them, so train/bound is the steadier comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

DEFAULT_MODELS = "narm,srgnn,gcsan,sgnnhn,lessr,dhcn,attenmixer"
PREPARE = {
    "diginetica": "sbr-bench datasets prepare diginetica --from ../shared/datasets/diginetica/srgnn_protocol",
    "gowalla": "sbr-bench datasets prepare gowalla --from ../shared/datasets/gowalla/lessr_protocol_pickle",
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--dataset", default="synthetic:diginetica",
                    help="diginetica | gowalla | synthetic:diginetica (default) | any prepared dataset name | a "
                         "folder of preprocessed splits (e.g. ../shared/datasets/diginetica/srgnn_protocol)")
    ap.add_argument("--data-dir", default="datasets", help="where prepared datasets are cached (default: datasets)")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default: {DEFAULT_MODELS})")
    ap.add_argument("--subset", type=int, help="train on this many training examples (fixed seeded subset)")
    ap.add_argument("--valid-subset", type=int, help="validation examples evaluated (default: subset/4; all "
                    "without --subset)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in every child (default: 1)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:k] (default: cpu)")
    ap.add_argument("--seed", type=int, default=0, help="model init and batch order seed (default: 0)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per model and interpreter; median kept")
    ap.add_argument("--python", action="append", default=[], metavar="PATH",
                    help="another interpreter to run every model under as well (repeatable)")
    ap.add_argument("--compare-torch-scatter", action="store_true",
                    help="run every model with and without torch-scatter (import blocked) in this interpreter")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every model that has KEY (JSON value), e.g. dim=256 for the "
                         "paper's setting, where all models use d = 256 and batch 100 (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="also write all rows as JSON here")
    # internal: one model in a child process
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--block-torch-scatter", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    check_sets(ap, args.set)
    return args


def apply_sets(cfg: dict, items) -> dict:
    """cfg with the --set KEY=VALUE items (JSON values) whose KEY it has."""
    cfg.update({k: json.loads(v) for k, _, v in (item.partition("=") for item in items) if k in cfg})
    return cfg


def check_sets(ap, items) -> None:
    """--set KEY=VALUE items have a key and a JSON value (else the parser's one-line error)."""
    for item in items:
        key, eq, value = item.partition("=")
        try:
            json.loads(value)
        except json.JSONDecodeError:
            eq = ""
        if not (key and eq):
            ap.error(f"--set {item}: expected KEY=VALUE with a JSON value, e.g. --set dim=256")


# --- child: one model, one epoch -----------------------------------------------------------------------

def child(args) -> int:
    if args.block_torch_scatter:
        sys.modules["torch_scatter"] = None  # PyG's `import torch_scatter` fails: WITH_TORCH_SCATTER = False
    import torch

    torch.set_num_threads(args.threads)
    from sbr_bench.io import write_json
    from sbr_bench.models.registry import model_config
    from sbr_bench.profiling import profile_model

    with open(args.data_file, "rb") as f:
        dataset = pickle.load(f)
    calls = count_torch_scatter_calls()
    cfg = apply_sets(model_config(args.child), args.set)
    row = profile_model(args.child, cfg, dataset, args.device, seed=args.seed)
    import torch_geometric.typing

    row.update(python=sys.executable, torch=torch.__version__,
               with_torch_scatter=torch_geometric.typing.WITH_TORCH_SCATTER,
               torch_scatter_calls=None if calls is None else sum(calls.values()))
    write_json(args.out, row)
    return 0


def count_torch_scatter_calls() -> dict | None:
    """Where PyG found torch-scatter, count the calls PyG routes to it (None without it): shows whether the
    package is on any of the models' code paths at all, independently of noisy timings."""
    import torch_geometric.typing as pyg_typing

    if not pyg_typing.WITH_TORCH_SCATTER:
        return None
    module, calls = pyg_typing.torch_scatter, {}
    for name in ("scatter", "segment_csr", "segment_coo", "scatter_max", "scatter_min", "scatter_mul"):
        original = getattr(module, name, None)
        if original is None:
            continue

        def counted(*a, _name=name, _original=original, **kw):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*a, **kw)

        setattr(module, name, counted)  # PyG looks these up on the module at call time
    return calls


# --- parent ----------------------------------------------------------------------------------------------

def load_data(args):
    from sbr_bench.data.dataset import IMPORT_FILE, load_dataset
    from sbr_bench.profiling import subset_split

    name = args.dataset
    if not (name.startswith("synthetic") or Path(name).is_dir() or (Path(args.data_dir) / name / IMPORT_FILE).exists()):
        how = PREPARE.get(name, f"sbr-bench datasets prepare {name} --from PATH")
        sys.exit(f"--dataset {name}: not prepared in {args.data_dir}/ (no {name}/{IMPORT_FILE}); prepare it "
                 f"once from the shared splits with:\n  {how}" + (f" --data-dir {args.data_dir}"
                                                               if args.data_dir != "datasets" else ""))
    dataset = load_dataset(name, data_dir=args.data_dir)
    full_train, full_valid = len(dataset.train), len(dataset.valid)
    valid_n = args.valid_subset or (max(1, args.subset // 4) if args.subset else None)
    dataset = replace(dataset, train=subset_split(dataset.train, args.subset, seed=0),
                      valid=subset_split(dataset.valid, valid_n, seed=1))
    return dataset, full_train, full_valid


def run_child(python: str, extra: list, model: str, data_file: str, args, tmp: str) -> dict:
    out = os.path.join(tmp, f"row-{time.monotonic_ns()}.json")
    cmd = [python, os.path.abspath(__file__), "--child", model, "--data-file", data_file, "--out", out,
           "--threads", str(args.threads), "--device", args.device, "--seed", str(args.seed),
           *[f"--set={item}" for item in args.set], *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    row = spawn(cmd, out, env)
    return dict(row, model=model, python=python) if row.get("status") == "failed" else row


def spawn(cmd: list, out: str, env: dict, timeout: float | None = None) -> dict:
    """Run a child that writes its row as JSON to `out`: that row, or {"status": "failed", "reason": ...}
    with the child's last line of output (a TimeoutExpired propagates)."""
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0 or not os.path.exists(out):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "reason": f"child exit {proc.returncode}: {tail[0]}"}
    with open(out) as f:
        return json.load(f)


def median_row(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "trained"]
    if not ok:
        return rows[0]
    ok.sort(key=lambda r: r["train_s"])
    row = dict(ok[(len(ok) - 1) // 2])
    row["train_s_runs"] = [r["train_s"] for r in rows if r["status"] == "trained"]
    return row


def variants(args) -> list[tuple[str, str, list]]:
    """(label, interpreter, extra child flags) per variant; one unlabelled variant by default."""
    if args.compare_torch_scatter:
        import importlib.util

        if importlib.util.find_spec("torch_scatter") is None:
            sys.exit(f"--compare-torch-scatter: torch_scatter is not importable by {sys.executable}; run this "
                     "from an environment that has it (e.g. a separate venv with `pip install -e '.[scatter]'`)")
        return [("no-scatter", sys.executable, ["--block-torch-scatter"]), ("+scatter", sys.executable, [])]
    found = [("this", sys.executable, [])] + [(f"py{i}", p, []) for i, p in enumerate(args.python, 1)]
    return found if args.python else [("", sys.executable, [])]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    from sbr_bench.profiling import format_rows, legend, ratio_line

    if args.threads < 1 or args.repeats < 1:
        sys.exit("--threads and --repeats need to be at least 1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    kinds = variants(args)
    start = time.perf_counter()
    dataset, full_train, full_valid = load_data(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sbr-epoch-time-") as tmp:
        data_file = os.path.join(tmp, "dataset.pkl")
        with open(data_file, "wb") as f:
            pickle.dump(dataset, f, protocol=pickle.HIGHEST_PROTOCOL)
        for model in models:
            runs = {label: [] for label, _, _ in kinds}
            for rep in range(args.repeats):
                # interleaved, in alternating order (ABBA): drifts in machine load hit every variant alike
                for label, python, extra in (kinds if rep % 2 == 0 else kinds[::-1]):
                    print(f"[{model}{' ' + label if label else ''} run {rep + 1}/{args.repeats}] ...",
                          file=sys.stderr, flush=True)
                    runs[label].append(run_child(python, extra, model, data_file, args, tmp))
            for label, python, _ in kinds:
                row = median_row(runs[label])
                if label:
                    scatter = row.get("with_torch_scatter")
                    row["variant"] = label + ("" if scatter is None or args.compare_torch_scatter else
                                              " +scatter" if scatter else " no-scatter")
                rows.append(row)
    ok = [r for r in rows if r["status"] == "trained"]
    env = ok[0] if ok else {}
    print(f"\nOne training epoch per model on {dataset.name}: {len(dataset.train):,} training examples"
          f"{f' (fixed subset of {full_train:,})' if len(dataset.train) < full_train else ''}, "
          f"{len(dataset.valid):,} validation examples"
          f"{f' (of {full_valid:,})' if len(dataset.valid) < full_valid else ''}, {dataset.n_items:,} items "
          f"(full catalogue); device {args.device}, {args.threads} torch thread(s), torch {env.get('torch', '?')}, "
          f"{os.cpu_count()} CPUs; each model in its own process; repeats {args.repeats}.")
    for label, python, extra in kinds:
        if label:
            print(f"  {label}: {python} {' '.join(extra)}".rstrip())
    print(format_rows(rows))
    print(legend(rows))
    line = ratio_line(rows)
    if line:
        print(line)
    if len(kinds) > 1:
        first = kinds[0][0]
        base = {r["model"]: r for r in rows if r.get("variant", "").startswith(first) and r["status"] == "trained"}
        for r in rows:
            b = base.get(r["model"])
            if b is not None and r is not b and r["status"] == "trained":
                calls = r.get("torch_scatter_calls")
                print(f"{r['model']}: {r['variant']} / {b['variant']}: train time {r['train_s'] / b['train_s']:.2f}x, "
                      f"train/bound {r['ratio'] / b['ratio']:.2f}x, eval {r['eval_s'] / b['eval_s']:.2f}x"
                      + ("" if calls is None else f"; calls PyG routed to torch-scatter: {calls:,}"))
    print(f"(benchmark wall time {time.perf_counter() - start:.0f} s)")
    if args.json:
        from sbr_bench.io import write_json

        write_json(args.json, {"argv": sys.argv, "dataset": dataset.name, "train_examples": len(dataset.train),
                               "valid_examples": len(dataset.valid), "n_items": dataset.n_items, "rows": rows})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
