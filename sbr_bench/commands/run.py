"""`sbr-bench run`: train and evaluate models over seeds; write a run record and a Table-2-style result."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time

from ..errors import UserError
from ..units import load_dataset, train_unit  # noqa: F401  (the CLI runs the library's units)

HELP = "train and evaluate models on a dataset over seeds (Table 2 style results in runs/<run-id>/)"

EPILOG = """\
Epochs: --epochs N sets every model's epochs; without it each model uses its own default (--set epochs=N
also works), capped at 5 on the built-in synthetic datasets, where all ten models take about 2 minutes on
2 idle CPU cores.
Selection (--selection): refit (default) chooses the number of epochs on validation MRR@20 (early stopping
with the model's patience), then trains the model again from scratch, same seed, on train + validation for
that many epochs and evaluates the test split once; baselines are fitted on train + validation for the
test. valid keeps the selected weights (never trained on validation). literature does what the reference
code does: train on train + validation, evaluate the test split after every epoch, report each metric's
best epoch; its tables say best-on-test: optimistic, never the default, never mixed with the others.
Threads: on a CPU shared with other jobs, --threads 1 avoids oversubscription (measured 10-30x slowdowns).
Multi-process: `torchrun --nproc_per_node N -m sbr_bench.cli run ...` trains each model with
DistributedDataParallel over N processes (gloo on CPU, NCCL with one GPU per process); --batch-size stays
the global batch size, only rank 0 writes the run folder (see docs/guide.md, "Multi-process training").
Exit status: 0 if at least one model finished for at least one seed, 1 if every model failed (failures are
recorded with their reason in <model>/seed<k>/summary.json and results.md), 2 on a usage error.
"""

# Epoch caps for built-in datasets when neither --epochs nor --set epochs=... is given (name prefix -> cap).
DEFAULT_EPOCH_CAPS = {"synthetic": 5}
DEFAULT_CHECKPOINT_EVERY = 1000


def add_arguments(p) -> None:
    p.epilog = EPILOG
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--models", help="all | table3 | comma-separated names | ENCODER+READOUT (default: all)")
    add_dataset_arguments(p, default=None)
    add_selection_argument(p)
    p.add_argument("--runs-dir", default="runs", help="where run records go (default: runs)")
    p.add_argument("--seeds", type=int, help="number of seeds: 0..N-1 (default: 1)")
    p.add_argument("--seed-list", help="explicit comma-separated seeds, e.g. 0,3,7 (instead of --seeds)")
    p.add_argument("--epochs", type=int, help="epochs for every model (default: the model's own, capped "
                   "on synthetic data; see below)")
    p.add_argument("--device", help="auto | cpu | cuda[:k] (default: auto)")
    p.add_argument("--batch-size", type=int, help="training batch size for every model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every model that has it, or MODEL.KEY=VALUE for one "
                        "model (repeatable; values are JSON, else strings)")
    p.add_argument("--run-id", help="name of the run folder under --runs-dir: letters, digits and ._-+=, not "
                   "starting with '.' (default: UTC timestamp + config hash)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (a run id under --runs-dir, or "
                   "the path of an existing run folder): finished model/seed units are kept, an unfinished one "
                   "continues from its checkpoint")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help=f"also checkpoint every N batches within an epoch (default: {DEFAULT_CHECKPOINT_EVERY}; "
                        "0: only at the end of each epoch)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's own); 1 avoids thread oversubscription on a busy "
                        "machine, which can slow CPU training many-fold")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms (warn-only: PyG scatter has no deterministic CUDA kernel)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--profile", action="store_true",
                   help="train one epoch per model, print the per-phase time breakdown and stop (nothing is kept)")


def add_dataset_arguments(p, default="synthetic") -> None:
    """--dataset and how to prepare it; shared by run, sweep and dissect (recorded in the run config)."""
    p.add_argument("--dataset", default=default, help="dataset name (default: synthetic; synthetic:tiny is a "
                   "small one; see `sbr-bench datasets list`)")
    p.add_argument("--data-dir", default="datasets", help="where processed datasets are cached (default: datasets)")
    p.add_argument("--protocol", choices=("srgnn", "lessr"), help="preprocessing protocol for a raw source "
                   "(default: the dataset's own)")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="latest share of training sessions held out for validation (default: 0.1)")
    p.add_argument("--protocol-param", action="append", default=[], metavar="KEY=VALUE",
                   help="protocol parameter, e.g. strict=true (repeatable)")


def add_selection_argument(p) -> None:
    from ..runs import DEFAULT_SELECTION, SELECTIONS

    p.add_argument("--selection", choices=tuple(SELECTIONS), help="how the reported test numbers are chosen: "
                   f"refit | valid | literature (default: {DEFAULT_SELECTION}; see below)")


def dataset_spec(args) -> dict:
    """What identifies the processed dataset of a run; stored in config["dataset"] and reused on resume."""
    return {"name": args.dataset or "synthetic", "data_dir": args.data_dir, "protocol": args.protocol,
            "valid_fraction": args.valid_fraction,
            "params": dict(parse_key_values(args.protocol_param, "--protocol-param"))}


# --- configuration ------------------------------------------------------------------------------------

def parse_value(text: str):
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


def parse_sets(items, models: list[str]) -> tuple[dict, dict]:
    """--set KEY=VALUE / MODEL.KEY=VALUE -> (global overrides, {model: overrides})."""

    global_sets, scoped = {}, {}
    for key, value in parse_key_values(items, "--set"):
        item = f"{key}={value}"
        if "." in key:
            model, _, key = key.rpartition(".")
            if model not in models:
                raise UserError(f"--set {item}: model '{model}' is not among --models ({', '.join(models)})")
            scoped.setdefault(model, {})[key] = value
        else:
            global_sets[key] = value
    return global_sets, scoped


def epoch_cap(dataset_name: str) -> int | None:
    for prefix, cap in DEFAULT_EPOCH_CAPS.items():
        if dataset_name.startswith(prefix):
            return cap
    return None


def model_configs(models: list[str], args, dataset_name: str) -> dict:
    from ..models.registry import TABLE3_DIM, model_config

    global_sets, scoped = parse_sets(args.set, models)
    if "table3" in [p.strip() for p in (getattr(args, "models", None) or "").split(",")]:
        global_sets.setdefault("dim", TABLE3_DIM)  # both sides of Table 3 at the paper's d
    if args.epochs is not None:
        global_sets["epochs"] = args.epochs
    if args.batch_size is not None:
        global_sets["batch_size"] = args.batch_size
    defaults = {name: model_config(name) for name in models}
    for key in global_sets:
        if not any(key in cfg for cfg in defaults.values()):
            raise UserError(f"--set {key}=...: no selected model has the parameter '{key}'")
    cap = epoch_cap(dataset_name)
    configs = {}
    for name in models:
        overrides = {k: v for k, v in global_sets.items() if k in defaults[name]}
        overrides.update(scoped.get(name, {}))
        cfg = model_config(name, overrides)
        if cap is not None and "epochs" not in overrides and "epochs" in cfg:
            cfg["epochs"] = min(int(cfg["epochs"]), cap)
        configs[name] = cfg
    return configs


def seed_list(args) -> list[int]:

    if args.seed_list:
        try:
            seeds = [int(s) for s in args.seed_list.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seed-list {args.seed_list}: expected comma-separated integers") from None
        if not seeds:
            raise UserError("--seed-list: no seeds given")
        if min(seeds) < 0:  # numpy refuses them: every unit would fail instead of one usage error
            raise UserError(f"--seed-list {args.seed_list}: seeds must be 0 or more")
        return list(dict.fromkeys(seeds))
    n = 1 if args.seeds is None else args.seeds
    if n < 1:
        raise UserError(f"--seeds {n}: need at least one seed")
    return list(range(n))


def check_models_build(configs: dict, dataset) -> None:
    """Build every model once before any training, so a bad parameter is a usage error up front and not
    a failure found after the models before it have trained."""
    from ..models.registry import build_model

    for name, cfg in configs.items():
        try:
            build_model(name, dataset.n_items, cfg)
        except (ValueError, TypeError) as e:
            raise UserError(f"--models {name}: {e}") from None


def new_config(args, dataset) -> dict:
    from ..data.synthetic import is_synthetic
    from ..models.oracle import oracle_available
    from ..models.registry import resolve_names
    from ..runs import dataset_fingerprint

    models = resolve_names(args.models or "all", synthetic=oracle_available(dataset))
    if not models:

        raise UserError(f"--models {args.models or 'all'}: no models available")
    configs = model_configs(models, args, dataset.name)
    if "oracle" in configs and is_synthetic(dataset):  # the oracle rebuilds this dataset's generator
        configs["oracle"].update(synthetic_size=dataset.meta["size"], synthetic_seed=int(dataset.meta["seed"]))
    check_models_build(configs, dataset)
    return {
        "command": " ".join(shlex.quote(a) for a in ["sbr-bench"] + sys.argv[1:]),
        "models": models,
        "cfg": configs,
        "seeds": seed_list(args),
        "dataset": dict(dataset_spec(args), resolved_name=dataset.name, meta=dataset.meta,
                        fingerprint=dataset_fingerprint(dataset), stats=dataset.stats()),
        "device": args.device or "auto",
        "deterministic": bool(args.deterministic),
        "checkpoint_every": DEFAULT_CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every,
        "epochs_rule": ("--epochs" if args.epochs is not None else
                        f"model default capped at {epoch_cap(dataset.name)}" if epoch_cap(dataset.name) else
                        "model default"),
        "selection": selection_arg(args),
    }


def selection_arg(args) -> str:
    from ..runs import DEFAULT_SELECTION

    return getattr(args, "selection", None) or DEFAULT_SELECTION


def check_args(args) -> None:
    """Usage errors found before anything is loaded or written (the rest are found before the run folder
    is created: model names and --set values need the dataset)."""
    from ..runs import check_run_id

    if args.run_id is not None:
        check_run_id(args.run_id, "--run-id")
    if args.models is not None and not args.models.replace(",", "").strip():
        raise UserError(f"--models {args.models!r}: no model named (use all for every model)")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every {args.checkpoint_every}: must be 0 (end of epoch only) or more")
    if not args.resume:
        seed_list(args)


def check_resume_args(args) -> None:

    fixed = {"--models": args.models, "--dataset": args.dataset, "--seeds": args.seeds, "--selection": args.selection,
             "--seed-list": args.seed_list, "--epochs": args.epochs, "--batch-size": args.batch_size,
             "--set": args.set or None, "--run-id": args.run_id}
    given = [flag for flag, value in fixed.items() if value is not None]
    if given:
        raise UserError(f"--resume continues a run with its recorded config; drop {', '.join(given)}")


# --- execution ----------------------------------------------------------------------------------------

def load_in_turn(spec: dict):
    """`load_dataset` on rank 0 first (it may prepare and cache the dataset), then on the other ranks;
    a usage error on rank 0 is raised on every rank."""
    from .. import distributed

    dataset, error = None, None
    if distributed.is_main():
        try:
            dataset = load_dataset(spec)
        except UserError as e:
            error = str(e)
    error = distributed.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    return dataset if dataset is not None else load_dataset(spec)


def create_run_dir(runs_dir, run_id: str, config: dict):
    """Rank 0 creates the run folder (config.json, env.json); every rank gets its path, or its error."""
    from .. import distributed
    from ..env import environment
    from ..runs import RunDir

    outcome = None
    if distributed.is_main():
        try:
            run_dir = RunDir.create(runs_dir, run_id, config, environment(), lock=True)
            outcome = ("ok", str(run_dir.path))
        except UserError as e:
            outcome = ("error", str(e))
    outcome = distributed.broadcast_object(outcome)
    if outcome[0] == "error":
        raise UserError(outcome[1])
    return run_dir if distributed.is_main() else RunDir(outcome[1])


def lock_run_dir(run_dir, what: str) -> None:
    """Rank 0 takes the run folder's lock (the only writer); every rank gets its error."""
    from .. import distributed

    error = None
    if distributed.is_main():
        try:
            run_dir.lock(what)
        except UserError as e:
            error = str(e)
    error = distributed.broadcast_object(error)
    if error is not None:
        raise UserError(error)


def main(args) -> int:
    from .. import distributed
    from ..runs import RunDir

    progress = not args.no_progress
    check_args(args)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: need at least one thread")
        import torch

        torch.set_num_threads(args.threads)  # before env.json records torch_threads
    if args.resume:
        if args.profile:
            raise UserError("--profile trains one epoch and keeps nothing; it does not combine with --resume")
        check_resume_args(args)
        run_dir = RunDir.open(args.resume, args.runs_dir)
        device_name = args.device or run_dir.config()["device"]
    else:
        run_dir, device_name = None, args.device or "auto"
    with distributed.session(device_name) as device:
        if distributed.is_main():
            return execute(args, run_dir, device, progress)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # rank 0 prints for all
            return execute(args, run_dir, device, progress=False)


def execute(args, run_dir, device, progress: bool) -> int:
    """The run itself; `device` is set under torchrun (this process's device), else resolved here. The run
    folder stays locked throughout (`sbr_bench.lock`; a second run on it is refused)."""
    held = []
    try:
        return _execute(args, run_dir, device, progress, held)
    finally:
        for locked in held:  # also on errors; the end of the process would release it anyway
            locked.unlock()


def _execute(args, run_dir, device, progress: bool, held: list) -> int:
    from .. import distributed
    from ..env import environment
    from ..runs import dataset_fingerprint, new_run_id, results_text
    from ..train import resolve_device

    if run_dir is not None:  # --resume
        held.append(run_dir)
        lock_run_dir(run_dir, f"--resume {args.resume}")
        config = run_dir.config()
        if args.checkpoint_every is not None:
            config["checkpoint_every"] = args.checkpoint_every
        if args.deterministic:
            config["deterministic"] = True
        dataset = load_in_turn(config["dataset"])
        if dataset_fingerprint(dataset) != config["dataset"]["fingerprint"]:
            raise UserError(f"--resume {args.resume}: dataset '{config['dataset']['name']}' differs from the one "
                            "this run started with (fingerprint mismatch); start a new run instead")
        device = device if device is not None else resolve_device(args.device or config["device"])
        if distributed.is_main():
            from ..io import write_json

            write_json(run_dir.path / f"env.resume-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json",
                       environment())
    else:
        dataset = load_in_turn(dataset_spec(args))
        config = new_config(args, dataset)
        device = device if device is not None else resolve_device(config["device"])
        if args.profile:
            from ..profiling import profile  # one epoch per model against the scoring bound

            return profile(config, dataset, device, progress)
        config["distributed"] = distributed.describe()
        if config["deterministic"]:  # so that env.json records the flags in force
            from ..train import seed_everything

            seed_everything(0, deterministic=True)
        hashed = {k: config[k] for k in ("models", "cfg", "seeds", "dataset", "deterministic", "selection")}
        run_id = args.run_id or (new_run_id(hashed) if distributed.is_main() else None)
        run_dir = create_run_dir(args.runs_dir, distributed.broadcast_object(run_id), config)
        held.append(run_dir)

    world = distributed.world()
    print(f"run {run_dir.run_id}: {len(config['models'])} model(s) x {len(config['seeds'])} seed(s) on "
          f"{config['dataset']['resolved_name']} ({len(dataset.train)} train / {len(dataset.valid)} valid / "
          f"{len(dataset.test)} test examples, {dataset.n_items} items), device {device}"
          + (f", {world} processes ({distributed.backend()})" if world > 1 else ""), flush=True)
    try:
        for name in config["models"]:
            for seed in config["seeds"]:
                train_unit(run_dir, name, config["cfg"][name], seed, dataset, device, config, progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with `sbr-bench run --resume {run_dir.path}`", file=sys.stderr)
        raise
    code = None
    if distributed.is_main():
        results = run_dir.write_results()
        print()
        print(results_text(results))
        print(f"\nrecord: {run_dir.path}  (results.md, results.json, <model>/seed<k>/)")
        code = 0 if any(m["seeds_ok"] for m in results["models"].values()) else 1
    return distributed.broadcast_object(code)
