"""`sbr-bench tune`: every model tuned with Optuna under the same budget on validation MRR@20, then its best
configuration and its defaults trained and tested over the seeds (`sbr_bench.tuning`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import UserError
from .options import add_experiment_arguments

HELP = "tune every model under the same budget on validation only (Optuna), then train the best configurations"

EPILOG = """\
Budget: --budget N trials per model (the first is the model's defaults) or --budget-hours H of trials per
model; every model gets the same, on the same validation split, epochs and early-stopping patience.
Objective: validation MRR@20; trials never see the test split. Search spaces: `sbr-bench models show NAME`;
replace one in a config file under [tune.space.MODEL] (docs/tuning.md). A parameter fixed with --set is
not searched.
After tuning, the best configuration of each model (runs/<id>/tuned/) and its defaults (runs/<id>/defaults/)
are trained over --seeds with --selection; `sbr-bench report` puts them side by side.
Studies live in runs/<id>/study.db (SQLite) or the database of --storage (any SQLAlchemy URL, e.g.
postgresql://host/db); --resume ID continues an interrupted tuning: trials a killed process left running are
marked failed and run again, counted once.
Engines: local runs trials one after another; ray runs them as Ray Tune trials (--address of a cluster,
--cpus-per-trial, --gpus-per-trial, --max-concurrent), Optuna's sampler proposing them from the same storage.
"""

FIXED_ON_RESUME = ("config", "models", "dataset", "data_dir", "seeds", "seed_list", "epochs", "batch_size", "selection",
                   "set", "run_id", "budget", "budget_hours", "sampler", "pruner", "study_seed", "patience",
                   "valid_fraction", "protocol", "protocol_param", "device")


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", metavar="FILE", help="an experiment file (TOML) with a [tune] table, e.g. a tune "
                   "folder's tune.toml; the options below override it")
    add_experiment_arguments(p, "the tune folder")
    p.add_argument("--budget", type=int, metavar="N", help="trials per model")
    p.add_argument("--budget-hours", type=float, metavar="H", help="hours of trials per model")
    p.add_argument("--sampler", choices=("tpe", "random"), help="Optuna sampler (default: tpe)")
    p.add_argument("--pruner", choices=("none", "median"), help="stop trials below the median validation "
                   "curve (Optuna's MedianPruner; default: none)")
    p.add_argument("--study-seed", type=int, help="the sampler's seed (default: 0)")
    p.add_argument("--patience", type=int, help="early-stopping patience of every model (default: 3)")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the study database (default: "
                   "sqlite in runs/<id>/study.db)")
    p.add_argument("--no-defaults", action="store_true", help="do not train the default configurations")
    p.add_argument("--tune-only", action="store_true", help="stop after tuning (--resume trains later)")
    p.add_argument("--resume", metavar="ID", help="continue an interrupted tuning (its id under --runs-dir, or its "
                   "folder)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray (Ray Tune)")
    p.add_argument("--address", help="with --engine ray: the cluster (ray://host:10001, auto; default: a local "
                   "instance)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="with --engine ray (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="with --engine ray (default: 0)")
    p.add_argument("--max-concurrent", type=int, help="with --engine ray: trials at once (default: as the "
                   "cluster allows)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads of the local engine")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(checkpoint_every=None, log=None, deterministic=False)


def tuning_of(args):
    """The `Tuning` of the options: the --config file (if any), then every option given."""
    from ..tuning import Tuning
    from .options import apply_options

    base = Tuning.from_toml(args.config) if args.config else Tuning()
    changes = {key: getattr(args, key) for key in ("budget", "budget_hours", "sampler", "pruner", "storage",
                                                     "study_seed", "patience") if getattr(args, key) is not None}
    if args.no_defaults:
        changes["train_defaults"] = False
    return base.replace(experiment=apply_options(base.experiment, args), **changes)


def main(args) -> int:
    from ..tuning import resume_tuning

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: need at least one thread")
        import torch

        torch.set_num_threads(args.threads)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError(f"--max-concurrent {args.max_concurrent}: need at least one trial at a time")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise UserError("--cpus-per-trial must be more than 0 and --gpus-per-trial at least 0")
    if args.engine != "ray" and (args.address or args.max_concurrent):
        raise UserError("--address and --max-concurrent apply to --engine ray only")
    engine_options = {}
    if args.engine == "ray":
        engine_options = dict(address=args.address, cpus_per_trial=args.cpus_per_trial,
                              gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent)
    progress, train = not args.no_progress, not args.tune_only
    if args.resume:
        given = [f"--{key.replace('_', '-')}" for key in FIXED_ON_RESUME if getattr(args, key, None) not in (None, [])]
        given += ["--no-defaults"] if args.no_defaults else []
        if given:
            raise UserError(f"--resume continues a tuning with its recorded settings; drop {', '.join(given)}")
        results = resume_tuning(args.resume, args.runs_dir or "runs", args.storage, progress, args.engine, train,
                                **engine_options)
    else:
        results = tuning_of(args).run(progress, args.engine, train, shlex.join(["sbr-bench"] + sys.argv[1:]),
                                      **engine_options)
    print()
    print(results.table())
    for which in ("tuned", "defaults"):
        if (results.path / which / "results.json").exists():
            print(f"\n{which} configurations:\n{results.results(which).table()}")
    print(f"\nrecord: {results.path}  (tuning.json, study.db, trials/, tuned/, defaults/)")
    return 0
