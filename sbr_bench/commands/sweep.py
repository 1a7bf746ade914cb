"""`sbr-bench sweep`: a benchmark grid, models x datasets x parameter values x seeds. Every grid point
is a normal run folder whose units are its seeds (paper Figures 5 and 6 sweep levels L and heads H of
Atten-Mixer). The units run in this process (`--engine local`) or as Ray tasks (`--engine ray`, see
sbr_bench/engines.py). Resumable: finished units are kept, an interrupted one continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .options import add_dataset_arguments, add_selection_argument, data_config, parse_value, split_sets

HELP = "run a grid of models x datasets x parameter values x seeds (each point a normal run; resumable; Ray optional)"

EPILOG = """\
Grid: --models and --datasets take comma-separated lists, --grid KEY=VALUES (repeatable) a model parameter
and its values (A..B for integers or a comma-separated list); every combination is one point, a run folder
<runs-dir>/<sweep-id>-... with one unit per seed. The older form --model M --param P --values V is --grid P=V.
Running the same command again skips finished units and continues unfinished ones from their checkpoints;
a point that was started with other settings is refused.

Engines: local (default) trains the units one after another in this process. ray submits one Ray task per
(point, seed) unit, with --cpus-per-task CPUs (also its torch threads); a task whose worker process dies is
retried up to --max-retries times and resumes from the unit's last checkpoint; a unit that fails (e.g.
non-finite loss) is recorded as failed, not retried. Needs `pip install -e '.[ray]'`. Without --address a
local Ray instance is started; with --address ray://HOST:10001 (or auto) the tasks run on that cluster, which
needs sbr-bench installed on every node and --runs-dir and --data-dir on a filesystem every node shares,
mounted at the same path (workers read the dataset cache and write the run records there).
Exit status: 0 if at least one unit finished, 1 if every unit failed, 2 on a usage error.
"""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--models", help="comma-separated model names or ENCODER+READOUT (also all, table3; "
                   "default: attenmixer)")
    p.add_argument("--model", help="one model (the older spelling of --models)")
    p.add_argument("--datasets", help="comma-separated dataset names (default: --dataset, else synthetic)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=VALUES",
                   help="a model parameter and its values, e.g. levels=1..4 or heads=1,2,4 (repeatable)")
    p.add_argument("--param", help="one parameter to vary (with --values; same as --grid PARAM=VALUES)")
    p.add_argument("--values", help="A..B (integers) or comma-separated values, e.g. 1..8 or 1,2,4,8")
    add_dataset_arguments(p, default=None)
    add_selection_argument(p)
    p.add_argument("--runs-dir", default="runs", help="where the point runs go (default: runs)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per point (default: 1)")
    p.add_argument("--epochs", type=int, help="epochs for every point (default: the model's own, capped on "
                   "synthetic data as in `run`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed override for every point whose model has KEY, or MODEL.KEY=VALUE (repeatable)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:k] (default: auto; with --engine ray a "
                   "task sees a GPU only with --gpus-per-task)")
    p.add_argument("--sweep-id", help="name prefix of the point runs (default: sweep-MODELS-PARAMS-DATASETS)")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also checkpoint every N batches within an epoch (default: as `run`; 0: epoch ends only)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads for --engine local")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: units one after another in this process (default); ray: one Ray task per unit")
    p.add_argument("--address", help="Ray cluster to use, e.g. ray://HOST:10001 or auto (default: start a "
                   "local Ray instance); --runs-dir and --data-dir must be shared by every node")
    p.add_argument("--cpus-per-task", type=float, default=1, metavar="N",
                   help="Ray CPUs per unit, also its torch threads (default: 1)")
    p.add_argument("--gpus-per-task", type=float, default=0, metavar="N",
                   help="Ray GPUs per unit (default: 0; needed for --device auto|cuda to find a GPU in a task)")
    p.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="Ray retries of a unit whose worker process died (default: 3)")
    p.add_argument("--no-progress", action="store_true")


# --- the grid -----------------------------------------------------------------------------------------

def parse_values(text: str, flag: str | None = None) -> list:
    """'A..B' (integers) or a comma-separated list of JSON-or-string values, without repeats."""
    flag = flag or f"--values {text}"
    m = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise UserError(f"{flag}: empty range")
        return list(range(a, b + 1))
    values = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        value = parse_value(part)
        if value not in values:
            values.append(value)
    if not values:
        raise UserError(f"{flag}: no values (use A..B or a comma-separated list)")
    return values


def parse_grid(args) -> list[tuple[str, list, str]]:
    """(param, values, the option that named it) for --param/--values and every --grid."""
    grid = []
    if (args.param is None) != (args.values is None):
        raise UserError("--param and --values go together (or use --grid PARAM=VALUES)")
    if args.param is not None:
        grid.append((args.param, parse_values(args.values), f"--param {args.param}"))
    for item in args.grid:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            raise UserError(f"--grid {item}: expected KEY=VALUES, e.g. --grid levels=1..4 or --grid heads=1,2,4")
        grid.append((key, parse_values(text, f"--grid {item}"), f"--grid {item}"))
    seen = set()
    for key, _, flag in grid:
        if key in seen:
            raise UserError(f"{flag}: '{key}' is in the grid twice")
        seen.add(key)
    return grid


def _names(text: str) -> list[str]:
    return list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))


def _one_of(args, plural: str, singular: str, default: str) -> str:
    many, one = getattr(args, plural), getattr(args, singular)
    if many is not None and one is not None:
        raise UserError(f"--{plural} and --{singular}: give one of them")
    return many or one or default


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


@dataclass
class Point:
    model: str
    dataset: str
    params: dict
    run_id: str

    def sweep_record(self, sweep_id: str) -> dict:
        record = {"id": sweep_id, "model": self.model, "dataset": self.dataset, "params": dict(self.params)}
        if len(self.params) == 1:  # what the report's parameter figures (5, 6) read
            (record["param"], record["value"]), = self.params.items()
        return record


def plan(args) -> tuple[str, list[Point]]:
    """The sweep id and every grid point, dataset by dataset (checked before anything is trained)."""
    from ..models.registry import model_config, resolve_names

    models = resolve_names(_one_of(args, "models", "model", "attenmixer"))
    if not models:
        raise UserError("--models: no models given")
    datasets = _names(_one_of(args, "datasets", "dataset", "synthetic"))
    if not datasets:
        raise UserError("--datasets: no datasets given")
    grid = parse_grid(args)
    fixed = {key.rpartition(".")[2] for key, _, _ in (s.partition("=") for s in args.set)}
    if args.epochs is not None:
        fixed.add("epochs")
    for key, _, flag in grid:
        if key in fixed:
            raise UserError(f"{flag}: '{key}' is also fixed by --set or --epochs; give it in one place")
    for model in models:
        params = model_config(model)
        for key, _, flag in grid:
            if key not in params:
                raise UserError(f"{flag}: model '{model}' has no parameter '{key}'; it has: "
                                f"{', '.join(sorted(params))}")
    keys = [key for key, _, _ in grid]
    sweep_id = args.sweep_id or _safe("-".join(
        part for part in ("sweep", "_".join(models), "_".join(keys), "_".join(datasets)) if part))
    points = []
    for dataset in datasets:
        for model in models:
            for combo in itertools.product(*(values for _, values, _ in grid)):
                params = dict(zip(keys, combo))
                run_id = sweep_id + (f"-{model}" if len(models) > 1 else "") + \
                    (f"-{dataset}" if len(datasets) > 1 else "") + "".join(f"-{k}{v}" for k, v in params.items())
                points.append(Point(model, dataset, params, _safe(run_id)))
    ids = [p.run_id for p in points]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"two grid points would share the run folder '{dup}'; use values that differ in letters "
                        "or digits")
    return sweep_id, points


def point_experiment(args, point: Point):
    """The `Experiment` of one grid point: its model, dataset and parameter values, the fixed --set
    overrides that apply to its model, and the sweep's seeds, epochs and selection."""
    import dataclasses

    from ..experiment import DEFAULT_CHECKPOINT_EVERY, Experiment
    from ..models.registry import model_config
    from ..runs import DEFAULT_SELECTION

    own = model_config(point.model)
    common, scoped = split_sets(args.set)
    return Experiment(
        models=[point.model], dataset=dataclasses.replace(data_config(args), name=point.dataset),
        seeds=args.seeds, epochs=args.epochs, overrides={k: v for k, v in common.items() if k in own},
        model_overrides={point.model: dict(scoped.get(point.model, {}), **point.params)},
        selection=args.selection or DEFAULT_SELECTION, device=args.device, runs_dir=args.runs_dir,
        checkpoint_every=DEFAULT_CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every)


def _check_sets(args, models: list[str]) -> None:
    """A fixed --set must apply to some model of the sweep (as in `run`)."""
    from ..models.registry import model_config

    common, scoped = split_sets(args.set)
    for scope, params in [(None, common), *scoped.items()]:
        if scope is not None and scope not in models:
            raise UserError(f"--set {scope}.{next(iter(params))}=...: model '{scope}' is not among the sweep's "
                            f"models ({', '.join(models)})")
        for name in params:
            if not any(name in model_config(m) for m in ([scope] if scope else models)):
                raise UserError(f"--set {name}=...: no model of the sweep has the parameter '{name}'")


def prepare(args, points: list[Point], sweep_id: str, device: str) -> list[tuple[Point, object, dict]]:
    """Create the run folder of every new point (config.json, env.json) and check that every existing one
    was started with the same settings; (point, RunDir, config) each."""
    import shlex
    import sys

    from ..engines import cached_dataset
    from ..experiment import create_run_dir, experiment_record
    from ..runs import RunDir, selection_of
    from ..training import check_precisions

    planned = []  # every point is planned and checked before any folder is written
    for point in points:
        experiment = point_experiment(args, point)
        dataset, _ = cached_dataset(experiment.dataset.spec())
        config = experiment.plan(dataset, command=shlex.join(["sbr-bench"] + sys.argv[1:]))
        config["sweep"] = point.sweep_record(sweep_id)
        check_precisions(config["cfg"].values(), device, args.gpus_per_task if args.engine == "ray" else None)
        planned.append((point, experiment, config))
    prepared = []
    try:
        for point, experiment, config in planned:
            label = ", ".join([point.model, point.dataset] + [f"{k}={v}" for k, v in point.params.items()])
            path = Path(args.runs_dir) / point.run_id
            if not (path / "config.json").exists():
                run_dir = create_run_dir(args.runs_dir, point.run_id, config, experiment_record(experiment, config))
                print(f"point {label}: {run_dir.path}")
            else:  # continue it, but only with the same settings: a sweep must not mix configurations
                run_dir = RunDir(path).lock(f"sweep {sweep_id}")
                recorded = run_dir.config()
                if any(recorded.get(k) != config[k] for k in ("cfg", "seeds", "deterministic")) or \
                        recorded["dataset"]["fingerprint"] != config["dataset"]["fingerprint"] or \
                        (args.selection is not None and selection_of(recorded) != args.selection):
                    run_dir.unlock()
                    raise UserError(f"sweep point {run_dir.path} was started with other settings (model config, "
                                    "seeds, dataset or selection); use another --sweep-id or the original options")
                config = recorded
                print(f"point {label}: continuing {run_dir.path}")
            prepared.append((point, run_dir, config))
    except BaseException:
        for _, run_dir, _ in prepared:
            run_dir.unlock()
        raise
    return prepared


def check_engine_args(args) -> None:
    if args.engine == "local":
        ray_only = (("--address", args.address, None), ("--cpus-per-task", args.cpus_per_task, 1),
                    ("--gpus-per-task", args.gpus_per_task, 0), ("--max-retries", args.max_retries, 3))
        for flag, value, default in ray_only:
            if value != default:
                raise UserError(f"{flag} applies to --engine ray only")
    else:
        if args.threads is not None:
            raise UserError("--threads applies to --engine local; with --engine ray use --cpus-per-task")
        if args.cpus_per_task <= 0 or args.gpus_per_task < 0 or args.max_retries < 0:
            raise UserError("--cpus-per-task must be > 0, --gpus-per-task and --max-retries >= 0")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: need at least one thread")


# --- running ------------------------------------------------------------------------------------------

def main(args) -> int:
    from ..engines import import_ray
    from ..training import resolve_device

    check_engine_args(args)
    if args.engine == "ray":
        import_ray()  # a missing extra is a usage error before anything is written
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)  # before env.json records torch_threads
    sweep_id, points = plan(args)
    _check_sets(args, list(dict.fromkeys(p.model for p in points)))
    if args.engine == "local":
        device = str(resolve_device(args.device))
    else:  # each task resolves it on its own node; only check the spelling here
        device = args.device
        if device != "auto":
            import torch

            try:
                torch.device(device)
            except RuntimeError:
                raise UserError(f"--device {device}: expected auto, cpu or cuda[:k]") from None
    prepared = []
    try:
        prepared = prepare(args, points, sweep_id, device)
        return _run_points(args, points, prepared, sweep_id, device)
    finally:  # every point's folder is locked from its preparation on (a second sweep on it is refused)
        for _, run_dir, _ in prepared:
            run_dir.unlock()


def _run_points(args, points, prepared, sweep_id, device) -> int:
    from ..engines import Unit, run_local, run_ray
    from ..runs import format_table, headline_header, selection_caption, selection_of

    units = []
    for point, run_dir, config in prepared:
        for seed in config["seeds"]:
            unit = run_dir.unit(point.model, seed)
            if unit.is_finished():
                print(f"[{point.run_id} seed {seed}] already finished ({unit.read_summary().get('status')}), skipped")
            else:
                units.append(Unit(str(run_dir.path.resolve()), point.model, seed, f"{point.run_id} seed {seed}"))
    n_units = sum(len(config["seeds"]) for _, _, config in prepared)
    print(f"sweep {sweep_id}: {len(prepared)} point(s), {n_units} unit(s), {len(units)} to train "
          f"(engine {args.engine})", flush=True)
    data_dir = str(Path(data_config(args).data_dir).resolve())
    try:
        if units and args.engine == "ray":
            run_ray(units, data_dir, device, args.address, args.cpus_per_task, args.gpus_per_task, args.max_retries)
        elif units:
            run_local(units, data_dir, device, not args.no_progress)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same sweep command again to continue", flush=True)
        raise

    models = {p.model for p in points}
    datasets = {p.dataset for p in points}
    keys = list(points[0].params)
    mode = selection_of(prepared[0][2])
    header = (["model"] if len(models) > 1 else []) + (["dataset"] if len(datasets) > 1 else []) + keys + \
        headline_header(mode) + ["seeds ok"]
    rows, any_ok = [], False
    fmt = lambda stat: "failed" if not stat else f"{stat['mean']:.2f}"  # noqa: E731
    for point, run_dir, config in prepared:
        entry = run_dir.write_results()["models"][point.model]
        any_ok = any_ok or bool(entry["seeds_ok"])
        rows.append(([point.model] if len(models) > 1 else []) + ([point.dataset] if len(datasets) > 1 else []) +
                    [str(point.params[k]) for k in keys] +
                    [fmt(entry["test"].get("HR@20")), fmt(entry["test"].get("MRR@20")),
                     f"{len(entry['seeds_ok'])}/{len(config['seeds'])}"])
    what = ", ".join(sorted(models)) + " on " + ", ".join(sorted(datasets))
    print(f"\nsweep {sweep_id}: {what} (test, mean over seeds). {selection_caption(mode)}")
    print(format_table(header, rows, markdown=False))
    print(f"\nrecords: {Path(args.runs_dir) / sweep_id}*  (one run folder per point)")
    return 0 if any_ok else 1
