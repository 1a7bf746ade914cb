"""One training epoch of every model on the complete Diginetica and Gowalla splits, on CUDA, beside the
Atten-Mixer paper's RTX 3090 seconds per epoch; optionally per scoring precision, with its accuracy effect.

Usage: python benchmarks/gpu_epochs.py [--device cuda] [--datasets diginetica,gowalla] [--models M,...]
       [--setting paper|own] [--precision fp32[,bf16,tf32]] [--precision-models M,...] [--budget-s S]
       [--subset N] [--threads T] [--set KEY=VALUE] [--json OUT] [--markdown] [--prepare-only]

- Every (model, dataset, precision) trains one epoch in its own child process (this script again, with
  `--child`), through `sbr_bench.profiling.profile_model`, what `benchmarks/epoch_time.py` and `sbr-bench
  run --profile` use: one epoch as `sbr-bench run` trains it, then the validation pass, then the scoring
  bound (the products s@E^T, G@E, G^T@s alone, float32, for the model's batch sizes, dim and item count).
  Columns: epoch train seconds (data + forward + backward+step, device-synchronised), examples/s, peak
  memory (CUDA: peak allocated during the epoch; CPU: process peak RSS), bound seconds and train/bound,
  validation HR@20 / MRR@20 after the one epoch, and the paper's RTX 3090 seconds per epoch (Table 2) with
  ours / theirs where the paper reports the model and dataset.
- --setting paper (default): every model at the paper's d = 256, batch size 100 and the last 20% of the
  training sessions held out for validation (Section 5.1), so epochs are comparable with Table 2's.
  --setting own: each model's own defaults (as benchmarks/epoch_time.py) and a 10% validation split.
- --precision fp32,bf16: the first precision for every model, the others for --precision-models (default:
  all), each right after that model's first; then a table of validation HR@20 / MRR@20 per precision and
  the difference to the first, and the epoch time ratio (the models' `precision` config key: the
  arithmetic of the scoring products, sbr_bench/models/scoring.py).
- --budget-s S: stop starting children once S seconds have passed since the start (a running child is
  stopped at the budget); what was not run is listed. Models run in PRIORITY order (Atten-Mixer and SR-GNN
  first, DHCN last) and each model on every dataset before the next model; the table is in Table 2 order.
- Data: diginetica = the SR-GNN-protocol split, gowalla = the LESSR-protocol pickles (the paper used the
  LESSR protocol for Diginetica too, whose training split is not in ../shared). Looked up, in order: a
  prepared dataset of that name in --data-dir (`sbr-bench datasets prepare NAME --from ...`), the shared
  folder (../shared/datasets/..., or $SBR_BENCH_SHARED/datasets/...; cached under --data-dir), else that
  cache alone (--data-dir/<cache>/processed/*.npz, e.g. carried to a machine without ../shared: run
  `--prepare-only` once where the shared folder is, then take the folders it prints). A path to a folder
  or a processed .npz file works too, and synthetic:NAME.
- --subset N: train on a fixed seeded N-example subset (validation N/4), for dry runs (e.g. on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from epoch_time import apply_sets, check_sets, spawn  # noqa: E402 - the same folder (sys.path[0] as a script)

from sbr_bench.models.scoring import PRECISIONS  # noqa: E402
from sbr_bench.references import load_reference  # noqa: E402

# The Atten-Mixer paper (WSDM 2023), Table 2's "Time (s)": seconds per training epoch "on a single NVIDIA
# GeForce RTX 3090 GPU", LESSR-protocol splits, every model at the setting of its Section 5.1 (d = 256,
# batch 100, the last 20% of the training sessions for validation): sbr_bench/references/attenmixer.toml.
PAPER = load_reference("attenmixer")


def table2_epoch_s() -> dict[str, dict[str, float]]:
    """{dataset: {model: the paper's seconds per epoch}}."""
    out: dict[str, dict[str, float]] = {}
    for row in PAPER.results:
        if row["table"] == "Table 2" and "epoch_s" in row:
            out.setdefault(row["dataset"], {})[row["model"]] = row["epoch_s"]
    return out


PAPER_3090_EPOCH_S = table2_epoch_s()
PAPER_SETTING = {k: PAPER.setting[k] for k in ("dim", "batch_size")}
PAPER_VALID_FRACTION = PAPER.setting["valid_fraction"]
OWN_VALID_FRACTION = 0.1
# The trainable models of `--models all` (sbr_bench.models.registry.resolve_names) plus GRU4Rec and STAMP.
TABLE2 = ["gru4rec", "stamp", "nextitnet", "narm", "srgnn", "gcsan", "sgnnhn", "lessr", "niser", "dhcn", "dsan",
          "attenmixer"]
PRIORITY = ["attenmixer", "srgnn", "narm", "sgnnhn", "niser", "dsan", "gcsan", "lessr", "stamp", "gru4rec",
            "nextitnet", "dhcn"]
SHARED_SPLITS = {"diginetica": "diginetica/srgnn_protocol", "gowalla": "gowalla/lessr_protocol_pickle"}
MIN_START_S = 15  # no child is started with less budget left than this


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda", help="cuda (default) | cuda:k | cpu (dry runs)")
    ap.add_argument("--datasets", default="diginetica,gowalla", help="comma-separated (default: diginetica,gowalla)")
    ap.add_argument("--models", default=",".join(TABLE2), help="comma-separated (default: every trainable model of "
                    "`all`, plus gru4rec and stamp)")
    ap.add_argument("--setting", choices=("paper", "own"), default="paper",
                    help="paper: d=256, batch 100, 20%% validation for every model (default); own: model defaults")
    ap.add_argument("--precision", default="fp32", help="comma-separated, of fp32, tf32, bf16 (default: fp32)")
    ap.add_argument("--precision-models", help="models that also run the precisions after the first (default: all)")
    ap.add_argument("--budget-s", type=float, help="start no child after this many seconds; stop a running one then")
    ap.add_argument("--subset", type=int, help="train on a fixed seeded subset of this many examples (dry runs)")
    ap.add_argument("--valid-subset", type=int, help="validation examples (default: subset/4; all without --subset)")
    ap.add_argument("--threads", type=int, help="torch CPU threads per child (default: 1 on cpu, 4 on cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="datasets", help="prepared datasets and caches (default: datasets)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (JSON value) for every model that has KEY, after --setting (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="also write every row as JSON here")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs/)")
    ap.add_argument("--prepare-only", action="store_true", help="load (and cache) the datasets, print where, stop")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--child-precision", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in args.precisions if p not in PRECISIONS]
    if bad or not args.precisions:
        ap.error(f"--precision {args.precision}: choose from {', '.join(PRECISIONS)}")
    check_sets(ap, args.set)
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 4
    return args


# --- child: one model, one dataset, one precision ----------------------------------------------------------

def child(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from sbr_bench.io import write_json
    from sbr_bench.models.registry import model_config
    from sbr_bench.profiling import profile_model

    with open(args.data_file, "rb") as f:
        dataset = pickle.load(f)
    cfg = model_config(args.child)
    if args.setting == "paper":
        cfg.update({k: v for k, v in PAPER_SETTING.items() if k in cfg})
    apply_sets(cfg, args.set)
    cfg["precision"] = args.child_precision
    row = {"model": args.child, "precision": args.child_precision}
    row.update(profile_model(args.child, cfg, dataset, args.device, seed=args.seed))
    row.update(torch=torch.__version__, gpu=torch.cuda.get_device_name() if row["device"].startswith("cuda") else None)
    write_json(args.out, row)
    return 0


# --- parent: data ------------------------------------------------------------------------------------------

def shared_roots() -> list[Path]:
    roots = [Path(os.environ["SBR_BENCH_SHARED"]) / "datasets"] if os.environ.get("SBR_BENCH_SHARED") else []
    return roots + [ROOT.parent / "shared" / "datasets", Path("../shared/datasets")]


def _npz_valid_fraction(path: Path):
    import numpy as np

    with np.load(path) as z:
        return json.loads(bytes(z["header"]).decode()).get("meta", {}).get("valid_fraction")


def find_dataset(name: str, data_dir: Path, valid_fraction: float):
    """(dataset, where it came from, its processed .npz or None) for a name (see the module doc), or exit
    with what to do."""
    from sbr_bench.data.dataset import IMPORT_FILE, _name_for_path, prepare_dataset
    from sbr_bench.data.sessions import SessionDataset

    def prepared(source, where):
        got = prepare_dataset(source, data_dir=data_dir, valid_fraction=valid_fraction)
        return got.dataset, where, got.cache_path

    if name.startswith("synthetic"):
        return prepared(name, "built in")
    if Path(name).suffix == ".npz" and Path(name).is_file():
        return SessionDataset.load(name), name, Path(name)
    if Path(name).exists():
        return prepared(name, name)
    if (data_dir / name / IMPORT_FILE).exists():
        return prepared(name, f"{data_dir}/{name}")
    rel = SHARED_SPLITS.get(name)
    if rel is None:
        sys.exit(f"--datasets {name}: not synthetic, not a path and not prepared in {data_dir}/")
    for root in shared_roots():
        if (root / rel).is_dir():
            return prepared(str(root / rel), str(root / rel))
    cache = data_dir / _name_for_path(Path(rel)) / "processed"
    found = sorted(cache.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    matching = [p for p in found if _npz_valid_fraction(p) == valid_fraction]
    if matching or found:
        path = (matching or found)[0]
        return (SessionDataset.load(path), str(path) + ("" if matching else " (another validation fraction)"),
                path)
    sys.exit(f"--datasets {name}: neither {' nor '.join(str(r / rel) for r in shared_roots())} nor a cache in "
             f"{cache}/; where the shared folder is, run `python benchmarks/gpu_epochs.py --prepare-only` and "
             f"carry the .npz it names")


def load_all(args, valid_fraction):
    from sbr_bench.profiling import subset_split

    out = []
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        dataset, where, cache = find_dataset(name, Path(args.data_dir), valid_fraction)
        full = (len(dataset.train), len(dataset.valid))
        valid_n = args.valid_subset or (max(1, args.subset // 4) if args.subset else None)
        dataset = replace(dataset, train=subset_split(dataset.train, args.subset, seed=0),
                          valid=subset_split(dataset.valid, valid_n, seed=1))
        out.append((name, dataset, where, full, cache))
    return out


# --- parent: runs ------------------------------------------------------------------------------------------

def plan(models, datasets, precisions, precision_models) -> list[tuple[str, str, str]]:
    """(model, dataset, precision) in run order: PRIORITY order, each model on every dataset in the first
    precision, then (for precision_models) in the other precisions."""
    order = [m for m in PRIORITY if m in models] + [m for m in models if m not in PRIORITY]
    items = []
    for model in order:
        items += [(model, d, precisions[0]) for d in datasets]
        if model in precision_models:
            items += [(model, d, p) for p in precisions[1:] for d in datasets]
    return items


def run_child(args, model, precision, data_file, tmp, timeout) -> dict:
    out = os.path.join(tmp, f"row-{time.monotonic_ns()}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, "--child-precision", precision,
           "--data-file", data_file, "--out", out, "--device", args.device, "--threads", str(args.threads),
           "--seed", str(args.seed), "--setting", args.setting, *[f"--set={item}" for item in args.set]]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    try:
        row = spawn(cmd, out, env, timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "precision": precision, "status": "failed",
                "reason": f"stopped at the budget after {time.perf_counter() - start:.0f} s"}
    if row.get("status") == "failed":
        return dict(row, model=model, precision=precision)
    return dict(row, child_wall_s=time.perf_counter() - start)


# --- parent: tables ----------------------------------------------------------------------------------------

def _num(value, fmt):
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _ratio(a, b):
    return a / b if a is not None and b else None


def epoch_table(rows, markdown: bool) -> str:
    from sbr_bench.runs import format_table

    header = ["model", "dataset", "precision", "epoch s", "data s", "ex/s", "peak MiB", "bound s", "train/bound",
              "valid HR@20", "MRR@20", "3090 s", "ours/3090"]
    body = []
    for r in sorted(rows, key=lambda r: (TABLE2.index(r["model"]) if r["model"] in TABLE2 else 99, r["dataset"],
                                         PRECISIONS.index(r["precision"]))):
        paper = PAPER_3090_EPOCH_S.get(r["dataset"], {}).get(r["model"])
        if r["status"] != "trained":
            reason = r.get("reason") or r["status"]
            body.append([r["model"], r["dataset"], r["precision"], reason[:70]] + [""] * 8 + [_num(paper, ".2f")])
            continue
        valid = r.get("valid") or {}
        body.append([r["model"], r["dataset"], r["precision"], _num(r["train_s"], ".2f"), _num(r.get("data_s"), ".2f"),
                     _num(r["examples_per_s"], ",.0f"), _num(r.get("peak_mb"), ",.0f"), _num(r.get("bound_s"), ".3g"),
                     _num(r.get("ratio"), ".1f") + "x", _num(valid.get("HR@20"), ".2f"), _num(valid.get("MRR@20"), ".2f"),
                     _num(paper, ".2f"), "-" if paper is None else f"{r['train_s'] / paper:.3f}"])
    return format_table(header, body, markdown)


def precision_table(rows, precisions, markdown: bool) -> str | None:
    from sbr_bench.runs import format_table

    if len(precisions) < 2:
        return None
    got = {(r["model"], r["dataset"], r["precision"]): r for r in rows}
    body = []
    for (model, dataset, precision), r in sorted(got.items()):
        base = got.get((model, dataset, precisions[0]))
        if precision == precisions[0] or base is None:
            continue
        if r["status"] != "trained" or base["status"] != "trained":
            reason = r.get("reason") or base.get("reason") or "failed"
            body.append([model, dataset, precision, reason[:70], "", "", "", ""])
            continue
        a, b = base.get("valid") or {}, r.get("valid") or {}
        body.append([model, dataset, precision, f"{b['HR@20']:.2f} ({b['HR@20'] - a['HR@20']:+.2f})",
                     f"{b['MRR@20']:.2f} ({b['MRR@20'] - a['MRR@20']:+.2f})", f"{a['HR@20']:.2f} / {a['MRR@20']:.2f}",
                     f"{r['train_s'] / base['train_s']:.2f}x", _num(_ratio(r.get("peak_mb"), base.get("peak_mb")), ".2f") + "x"])
    if not body:
        return None
    return (f"Accuracy effect of the scoring precision (validation after one epoch, same seed and batches; "
            f"difference to {precisions[0]} in brackets):\n"
            + format_table(["model", "dataset", "precision", "HR@20", "MRR@20", f"{precisions[0]} HR/MRR",
                            "epoch time", "peak memory"], body, markdown))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    start = time.monotonic()
    import torch

    from sbr_bench.errors import ConfigError
    from sbr_bench.models.registry import model_config

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU (use --device cpu for a dry run)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        try:
            model_config(m)
        except ConfigError as e:  # an unknown name: one line, before anything runs
            sys.exit(f"--models: {e}")
    precision_models = set(models if args.precision_models is None else
                           [m.strip() for m in args.precision_models.split(",") if m.strip()])
    valid_fraction = PAPER_VALID_FRACTION if args.setting == "paper" else OWN_VALID_FRACTION
    datasets = load_all(args, valid_fraction)
    for name, ds, where, full, _ in datasets:
        print(f"{name}: {len(ds.train):,} training examples{f' (subset of {full[0]:,})' if args.subset else ''}, "
              f"{len(ds.valid):,} validation, {ds.n_items:,} items; from {where}", flush=True)
    if args.prepare_only:
        caches = [str(c.resolve().relative_to(ROOT)) if c.resolve().is_relative_to(ROOT) else str(c)
                  for *_, c in datasets if c is not None]
        print("processed files (carry these to a machine without ../shared; they are all it needs):\n  "
              + "\n  ".join(caches or ["none (synthetic data is generated)"]))
        return 0
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({gpu}), torch {torch.__version__}, CUDA {torch.version.cuda}, setting "
          f"{args.setting}, precisions {','.join(args.precisions)}, budget "
          f"{'none' if args.budget_s is None else f'{args.budget_s:.0f} s'}", flush=True)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="sbr-gpu-epochs-") as tmp:
        files = {}
        for name, ds, *_ in datasets:
            files[name] = os.path.join(tmp, f"{name.replace(':', '_').replace('/', '_')}.pkl")
            with open(files[name], "wb") as f:
                pickle.dump(ds, f, protocol=pickle.HIGHEST_PROTOCOL)
        for model, dataset, precision in plan(models, [d[0] for d in datasets], args.precisions, precision_models):
            left = None if args.budget_s is None else args.budget_s - (time.monotonic() - start)
            if left is not None and left < MIN_START_S:
                skipped.append(f"{model}/{dataset}/{precision}")
                continue
            print(f"[{time.monotonic() - start:5.0f} s] {model} on {dataset}, {precision} ...", flush=True)
            row = run_child(args, model, precision, files[dataset], tmp, left)
            row["dataset"] = dataset
            rows.append(row)
            done = (f"{row['train_s']:.2f} s epoch, {row['examples_per_s']:,.0f} ex/s" if row["status"] == "trained"
                    else row.get("reason", row["status"]))
            print(f"        {done}", flush=True)
    ds0 = datasets[0][1] if datasets else None
    print(f"\nOne training epoch per model ({args.setting} setting"
          f"{': d = 256, batch 100, 20% validation' if args.setting == 'paper' else ''}"
          f"{f'; training subset of {len(ds0.train):,} examples' if args.subset and ds0 is not None else ''}), "
          f"device {args.device} ({gpu}), torch {torch.__version__}, {args.threads} torch thread(s) per child:")
    print(epoch_table(rows, args.markdown))
    print("epoch s = data + forward + backward+step of one training epoch (device-synchronised on CUDA); data s =\n"
          "  collate + copy to the device; peak MiB = peak CUDA memory allocated during the epoch (CPU: process peak RSS);\n"
          "  bound s = the float32 scoring products alone (sbr_bench/profiling.py); valid = after that one epoch;\n"
          "  3090 s = the paper's Table 2 seconds per epoch on an RTX 3090 (LESSR-protocol splits, d = 256, batch 100);\n"
          "  ours/3090 = epoch s / 3090 s.")
    table = precision_table(rows, args.precisions, args.markdown)
    if table:
        print("\n" + table)
    if skipped:
        print(f"\nskipped (over the {args.budget_s:.0f} s budget): {', '.join(skipped)}")
    print(f"(wall time {time.monotonic() - start:.0f} s)")
    if args.json:
        from sbr_bench.io import write_json

        write_json(args.json, {"argv": sys.argv, "setting": args.setting, "device": args.device, "gpu": gpu,
                               "torch": torch.__version__, "cuda": torch.version.cuda, "precisions": args.precisions,
                               "datasets": {n: {"train_examples": len(d.train), "valid_examples": len(d.valid),
                                                "n_items": d.n_items, "from": w} for n, d, w, *_ in datasets},
                               "paper_3090_epoch_s": PAPER_3090_EPOCH_S, "rows": rows, "skipped": skipped,
                               "wall_s": time.monotonic() - start})
    return 0 if any(r["status"] == "trained" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
