"""`sbr-bench dissect`: train a model with sparse variational dropout and record how dense each of its
weight groups stays (paper Section 3, Figure 3)."""

from __future__ import annotations

import shlex
import sys

from .options import add_dataset_arguments, add_set_argument, data_config, split_sets

HELP = "train a model with SparseVD and record the density of each weight group (paper Figure 3)"


def add_arguments(p) -> None:
    from ..sparsevd import PRESETS

    p.add_argument("--model", default="srgnn", help="model name or ENCODER+READOUT (default: srgnn)")
    add_dataset_arguments(p)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--preset", default="textbook", choices=sorted(PRESETS),
                   help="textbook SparseVD, or atten_mixer_fig3: the authors' settings (reference doc §9.2)")
    p.add_argument("--threshold", type=float, help="log-alpha threshold for 'kept' (default: the preset's)")
    p.add_argument("--decay-variational-compat", action="store_true",
                   help="apply the model's l2 to θ and log σ² of the converted layers too, as the authors' code "
                        "did (default: the KL term alone regularises them)")
    p.add_argument("--log-every", type=int, default=50, help="record densities every N training steps")
    p.add_argument("--paths", default="", help="extra comma-separated nn.Linear module paths to convert")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, help="epochs (default: the model's own, capped at 5 on synthetic)")
    add_set_argument(p, "override a model config key (repeatable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--run-id")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted dissection run")
    p.add_argument("--no-progress", action="store_true")


def experiment_of(args):
    """The `Experiment` of a dissection: one model, validation selection, the preset's l2 and batch size
    unless --set gives them."""
    from ..errors import UserError
    from ..experiment import Experiment
    from ..models.registry import BaselineSpec, spec_for
    from ..sparsevd import PRESETS

    if isinstance(spec_for(args.model), BaselineSpec):
        raise UserError(f"--model {args.model}: a counting baseline has no weights to dissect")
    preset = PRESETS[args.preset]
    common, scoped = split_sets(args.set)
    overrides = {**common, **scoped.pop(args.model, {})}
    if scoped:
        raise UserError(f"--set {next(iter(scoped))}.KEY=...: only --model {args.model} is dissected")
    if args.epochs is not None:
        overrides["epochs"] = args.epochs  # the option wins over --set epochs=...
    for key in ("weight_decay", "batch_size"):
        if preset.get(key) is not None:
            overrides.setdefault("l2" if key == "weight_decay" else key, preset[key])
    return Experiment(models=[args.model], dataset=data_config(args), seeds=args.seeds,
                      model_overrides={args.model: overrides}, selection="valid", device=args.device,
                      runs_dir=args.runs_dir, run_id=args.run_id)


def _config(args, experiment, dataset) -> dict:
    from ..sparsevd import PRESETS

    preset = dict(PRESETS[args.preset], name=args.preset)
    if args.threshold is not None:
        preset["threshold"] = args.threshold
    if args.decay_variational_compat:
        preset["decay_variational"] = True
    config = experiment.plan(dataset, command=shlex.join(["sbr-bench"] + sys.argv[1:]))
    config.update(kind="dissect", sparsevd=dict(preset, log_every=args.log_every,
                                                paths=[p for p in args.paths.split(",") if p]))
    return config


def dissect_unit(run_dir, config, dataset, seed, device, progress) -> dict:
    import math

    from ..io import write_json
    from ..models.registry import build_model
    from ..sparsevd import SparseVD, SparseVDModel
    from ..training import TrainingFailed, seed_everything, train_model

    name = config["models"][0]
    cfg, sv = config["cfg"][name], config["sparsevd"]
    unit = run_dir.unit(name, seed)
    if unit.is_finished() and (unit.path / "density_final.json").exists():
        return unit.read_summary()
    seed_everything(seed)
    model, _ = build_model(name, dataset.n_items, cfg)
    sparse = SparseVD(model, paths=sv["paths"], threshold=sv["threshold"], log_sigma2_init=sv["log_sigma2_init"])
    wrapped = SparseVDModel(model, sparse, sv, len(dataset.train), math.ceil(len(dataset.train) / cfg["batch_size"]),
                            sv["log_every"], unit.path / "density.jsonl")
    # Checkpoints mid-epoch too, like `run`: a killed dissection resumes with an identical record.
    try:
        summary = train_model(wrapped, dataset, cfg, unit, device=device, seed=seed, progress=progress,
                              checkpoint_every=config.get("checkpoint_every", 0))
    except TrainingFailed as e:  # e.g. a non-finite variational loss: recorded, the other seeds go on
        print(f"[{name} seed {seed}] FAILED: {e.reason}")
        return unit.fail(e.reason)
    # The trainer has reloaded the best-validation weights (and their step): record their density apart
    # from the trajectory in density.jsonl, which already ends at the last training step.
    selected = wrapped.log_density(int(wrapped.step), int(wrapped.step) // wrapped.batches_per_epoch)
    write_json(unit.path / "density_final.json",
               dict(selected, groups=sparse.groups, weights="best validation epoch", best_epoch=summary["best_epoch"]))
    return summary


def main(args) -> int:
    from ..env import environment
    from ..errors import UserError
    from ..runs import RunDir, dataset_fingerprint, new_run_id
    from ..training import resolve_device
    from ..units import load_dataset

    if args.resume:
        run_dir = RunDir.open(args.resume, args.runs_dir).lock(f"--resume {args.resume}")
        config = run_dir.config()
        dataset = load_dataset(config["dataset"])
        if dataset_fingerprint(dataset) != config["dataset"]["fingerprint"]:
            raise UserError(f"--resume {args.resume}: the dataset differs from the one this run started with")
    else:
        experiment = experiment_of(args)
        dataset = experiment.load_dataset()
        config = _config(args, experiment, dataset)
        run_id = args.run_id or "dissect-" + new_run_id(config)
        run_dir = RunDir.create(args.runs_dir, run_id, config, environment(), lock=True)
    try:
        return _dissect(run_dir, config, dataset, resolve_device(args.device), not args.no_progress)
    finally:
        run_dir.unlock()


def _dissect(run_dir, config, dataset, device, progress: bool) -> int:
    for seed in config["seeds"]:
        dissect_unit(run_dir, config, dataset, seed, device, progress)
    run_dir.write_results()
    name = config["models"][0]
    print(f"density per weight group of {name} (kept / total weights, log alpha < {config['sparsevd']['threshold']}):")
    from ..io import read_json, read_jsonl

    for seed in config["seeds"]:
        path = run_dir.unit(name, seed).path
        if not (path / "density_final.json").exists():
            print(f"  seed {seed}: failed ({run_dir.unit(name, seed).read_summary().get('reason')})")
            continue
        rows = read_jsonl(path / "density.jsonl")
        final = read_json(path / "density_final.json")
        print(f"  seed {seed}: step {rows[0]['step']} -> step {rows[-1]['step']} (end of training); "
              f"selected weights (epoch {final['best_epoch']}, step {final['step']})")
        for group, value in sorted(final["density"].items()):
            kept, total = final["counts"][group]
            print(f"    {group:22s} {rows[0]['density'][group]:6.3f} -> {rows[-1]['density'][group]:6.3f};"
                  f" selected {value:6.3f}  ({kept}/{total})")
    print(f"record: {run_dir.path} (density.jsonl per seed; `sbr-bench report` draws Figure 3)")
    return 0
