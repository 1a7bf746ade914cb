"""`sbr-bench run`: train and evaluate models over seeds; write a run record and a Table-2-style result."""

from __future__ import annotations

import shlex
import sys

from ..errors import UserError
from .options import add_experiment_arguments, apply_options

HELP = "train and evaluate models on a dataset over seeds (Table 2 style results in runs/<run-id>/)"

EPILOG = """\
Config files: --config FILE reads an experiment (TOML: models, dataset, seeds, epochs, selection, overrides,
model_overrides; see docs/guide.md); the options given on the command line override it. Every run writes
the experiment it ran (its models resolved) to runs/<run-id>/experiment.toml: `--config` of
that file runs the same experiment again.
Epochs: --epochs N sets every model's epochs; without it each model uses its own default (--set epochs=N
also works), capped at 5 on the built-in synthetic datasets, where `--models all` (13 models) takes about
4.5 minutes on 2 idle CPU cores.
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


def add_arguments(p) -> None:
    p.epilog = EPILOG
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", metavar="FILE", help="an experiment file (TOML), e.g. a run's experiment.toml; "
                   "the options below override it")
    add_experiment_arguments(p, "the run folder", "table3 | ")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (a run id under --runs-dir, or "
                   "the path of an existing run folder): finished model/seed units are kept, an unfinished one "
                   "continues from its checkpoint")
    p.add_argument("--discard-checkpoint", action="store_true",
                   help="with --resume: move an unreadable checkpoint.pt aside (checkpoint.pt.discarded-TIME) and "
                        "train that unit from scratch")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also checkpoint every N batches within an epoch (default: 1000; 0: only at the end "
                        "of each epoch)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's own); 1 avoids thread oversubscription on a busy "
                        "machine, which can slow CPU training many-fold")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms (warn-only: PyG scatter has no deterministic CUDA kernel)")
    p.add_argument("--log", action="append", choices=("tensorboard", "mlflow"), help="also log every epoch to "
                   "TensorBoard (<unit>/tensorboard/) or MLflow ($MLFLOW_TRACKING_URI, else <runs-dir>/mlruns); "
                   "repeatable; needs the extra: pip install -e '.[tensorboard]' or '.[mlflow]'")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: units one after another in this process (default); ray: one Ray task per "
                        "model and seed (a local Ray instance; `sbr-bench sweep` has the cluster options)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--profile", action="store_true",
                   help="train one epoch per model, print the per-phase time breakdown and stop (nothing is kept)")


def experiment_of(args):
    """The `Experiment` of the options: the --config file (if any), then every option given."""
    from ..experiment import Experiment

    return apply_options(Experiment.from_toml(args.config) if args.config else Experiment(), args)


def check_resume_args(args) -> None:
    fixed = {"--config": args.config, "--models": args.models, "--dataset": args.dataset, "--seeds": args.seeds,
             "--selection": args.selection, "--seed-list": args.seed_list, "--epochs": args.epochs,
             "--batch-size": args.batch_size, "--set": args.set or None, "--run-id": args.run_id,
             "--valid-fraction": args.valid_fraction, "--protocol": args.protocol,
             "--protocol-param": args.protocol_param or None, "--profile": args.profile or None, "--log": args.log,
             "--engine": None if args.engine == "local" else args.engine}
    given = [flag for flag, value in fixed.items() if value is not None]
    if given:
        raise UserError(f"--resume continues a run with its recorded config; drop {', '.join(given)}")


def main(args) -> int:
    from ..experiment import resume
    from ..runs import results_text

    progress = not args.no_progress
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: need at least one thread")
        import torch

        torch.set_num_threads(args.threads)  # before env.json records torch_threads
    if args.resume:
        check_resume_args(args)
        results = resume(args.resume, args.runs_dir or "runs", args.device, args.checkpoint_every,
                         args.deterministic, progress, args.discard_checkpoint)
    else:
        if args.discard_checkpoint:
            raise UserError("--discard-checkpoint applies to --resume only")
        experiment = experiment_of(args)
        if args.profile:
            return profile(experiment, progress)
        results = experiment.run(progress, engine=args.engine,
                                 command=shlex.join(["sbr-bench"] + sys.argv[1:]))
    print()
    print(results_text(results.summary))
    print(f"\nrecord: {results.path}  (results.md, results.json, experiment.toml, <model>/seed<k>/)")
    return 0 if any(m["seeds_ok"] for m in results.summary["models"].values()) else 1


def profile(experiment, progress: bool) -> int:
    """One epoch per model against the scoring bound; nothing is kept."""
    from ..profiling import profile as run_profile
    from ..training import resolve_device

    dataset = experiment.load_dataset()
    config = experiment.plan(dataset)
    return run_profile(config, dataset, resolve_device(config["device"]), progress)
