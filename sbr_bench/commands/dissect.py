"""`sbr-bench dissect`: train a model with sparse variational dropout and record how dense each of its
weight groups stays (paper Section 3, Figure 3)."""

from __future__ import annotations

HELP = "train a model with SparseVD and record the density of each weight group (paper Figure 3)"


def add_arguments(p) -> None:
    from ..sparsevd import PRESETS

    from .run import add_dataset_arguments

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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model config key")
    p.add_argument("--device", default="auto")
    p.add_argument("--run-id")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted dissection run")
    p.add_argument("--no-progress", action="store_true")


def _config(args, dataset) -> dict:
    from ..errors import UserError
    from ..models.registry import BaselineSpec, model_config, spec_for
    from ..runs import dataset_fingerprint
    from ..sparsevd import PRESETS
    from .run import DEFAULT_CHECKPOINT_EVERY, check_models_build, dataset_spec, epoch_cap, parse_sets

    if isinstance(spec_for(args.model), BaselineSpec):
        raise UserError(f"--model {args.model}: a counting baseline has no weights to dissect")
    preset = dict(PRESETS[args.preset], name=args.preset)
    if args.threshold is not None:
        preset["threshold"] = args.threshold
    if args.decay_variational_compat:
        preset["decay_variational"] = True
    global_sets, scoped = parse_sets(args.set, [args.model])
    overrides = {**global_sets, **scoped.get(args.model, {})}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if preset.get("weight_decay") is not None:
        overrides.setdefault("l2", preset["weight_decay"])
    if preset.get("batch_size") is not None:
        overrides.setdefault("batch_size", preset["batch_size"])
    cfg = model_config(args.model, overrides)
    cap = epoch_cap(dataset.name)
    if cap and "epochs" not in overrides:
        cfg["epochs"] = min(int(cfg["epochs"]), cap)
    check_models_build({args.model: cfg}, dataset)
    return {
        "kind": "dissect", "models": [args.model], "cfg": {args.model: cfg}, "seeds": list(range(args.seeds)),
        "sparsevd": dict(preset, log_every=args.log_every, paths=[p for p in args.paths.split(",") if p]),
        "dataset": dict(dataset_spec(args), resolved_name=dataset.name, meta=dataset.meta,
                        fingerprint=dataset_fingerprint(dataset), stats=dataset.stats()),
        "device": args.device, "deterministic": False, "selection": "valid",
        "checkpoint_every": DEFAULT_CHECKPOINT_EVERY,
    }


def dissect_unit(run_dir, config, dataset, seed, device, progress) -> dict:
    import math

    from ..io import write_json
    from ..models.registry import build_model
    from ..sparsevd import SparseVD, SparseVDModel
    from ..train import TrainingFailed, seed_everything, train_model

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
    from ..train import resolve_device
    from .run import dataset_spec, load_dataset

    if args.resume:
        run_dir = RunDir.open(args.resume, args.runs_dir)
        config = run_dir.config()
        dataset = load_dataset(config["dataset"])
        if dataset_fingerprint(dataset) != config["dataset"]["fingerprint"]:
            raise UserError(f"--resume {args.resume}: the dataset differs from the one this run started with")
    else:
        dataset = load_dataset(dataset_spec(args))
        config = _config(args, dataset)
        run_dir = RunDir.create(args.runs_dir, args.run_id or "dissect-" + new_run_id(config), config, environment())
    device = resolve_device(args.device)
    for seed in config["seeds"]:
        dissect_unit(run_dir, config, dataset, seed, device, not args.no_progress)
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
