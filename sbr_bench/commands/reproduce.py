"""`sbr-bench reproduce`: run models in a paper's setting and put our numbers next to the published ones.

Two runs are made (or resumed) under `--runs-dir`: `<prefix>-valid` selects each model's number of epochs
on validation MRR@20, `<prefix>-literature` trains on train + validation and evaluates the test split after
every epoch. `sbr_bench.report.published` turns them into our literature, refit and valid columns beside
the published numbers, written to `<prefix>.md` and `<prefix>.json`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .options import split_sets

HELP = "run models in a paper's setting and print ours next to its published numbers (literature and refit)"
ANCHORS = ("pop", "spop", "sknn")
SHARED = Path("..") / "shared" / "datasets"  # beside the working directory, as in a clone of this project


def add_arguments(p) -> None:
    p.add_argument("--paper", required=True, help="whose numbers: a file in sbr_bench/references/ "
                   "(attenmixer, srgnn, dhcn, sgnnhn)")
    p.add_argument("--dataset", required=True, help="the paper's dataset name, e.g. gowalla, diginetica, yoochoose1_64")
    p.add_argument("--data", help="where that split is: a preprocessed folder or a dataset name sbr-bench knows "
                   f"(default: the folder of {SHARED} the reference file names)")
    p.add_argument("--models", help="comma-separated (default: every model of ours with a published number on "
                   "the dataset, plus pop, spop, sknn)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default: 1)")
    p.add_argument("--epochs", type=int, help="epochs for every model (default: the model's own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as in `run`, after the "
                   "paper's setting")
    p.add_argument("--runs-dir", default="runs", help="where the two runs go (default: runs)")
    p.add_argument("--data-dir", default="datasets", help="processed dataset cache (default: datasets)")
    p.add_argument("--prefix", help="run id prefix (default: reproduce-PAPER-DATASET)")
    p.add_argument("--device", help="auto | cpu | cuda[:k]")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")


def plan(args, ref) -> tuple[list[str], str, dict]:
    """(models, data location, dataset entry of the reference file)."""
    from ..models.registry import TABLE2_ORDER, resolve_names, specs

    published = ref.numbers(args.dataset)
    entry = ref.datasets.get(args.dataset, {})
    if not published:
        known = sorted({r["dataset"] for r in ref.results})
        raise UserError(f"--dataset {args.dataset}: {args.paper} publishes no numbers for it; it has: {', '.join(known)}")
    if args.models:
        models = resolve_names(args.models)
    else:
        ours = specs()
        order = TABLE2_ORDER + sorted(published)
        models = list(dict.fromkeys([*ANCHORS, *(m for m in order if m in published and m in ours)]))
    data = args.data
    if data is None:
        shared = SHARED / entry["shared"] if entry.get("shared") else None
        if shared is None or not shared.exists():
            raise UserError(f"--data: give the {args.dataset} split ({entry.get('protocol', 'the paper')} protocol)"
                            + (f"; {shared} does not exist" if shared is not None else ""))
        data = str(shared)
    return models, data, entry


def experiment(args, ref, models, data, selection: str, run_id: str):
    """The `Experiment` of one of the two runs: the paper's setting, then the --set overrides."""
    from ..experiment import DataConfig, Experiment
    from ..models.registry import model_config

    setting = dict(ref.setting)
    dataset = DataConfig(name=data, data_dir=args.data_dir, valid_fraction=setting.pop("valid_fraction", 0.1))
    batch_size = setting.pop("batch_size", None)
    overrides = {k: v for k, v in setting.items() if any(k in model_config(m) for m in models)}
    common, scoped = split_sets(args.set)
    overrides.update(common)
    if selection == "literature" and any("patience" in model_config(m) for m in models):
        overrides["patience"] = 0  # last, so it wins: the whole trajectory, every epoch the valid run may choose
    return Experiment(models=models, dataset=dataset, seeds=args.seeds, epochs=args.epochs, batch_size=batch_size,
                      overrides=overrides, model_overrides=scoped, selection=selection,
                      device=args.device or "auto", runs_dir=args.runs_dir, run_id=run_id)


def _check_same(args, models, run_path) -> None:
    """A recorded run is resumed only for the same models and seeds (else a table would mix settings)."""
    from ..io import read_json

    config = read_json(run_path / "config.json")
    if config["models"] != models or config["seeds"] != list(range(args.seeds)):
        raise UserError(f"{run_path} was made for models {','.join(config['models'])} and seeds {config['seeds']}; "
                        "use the same --models/--seeds to resume it, or another --prefix")


def main(args) -> int:
    from ..experiment import resume
    from ..references import load_reference
    from ..report.published import comparison, comparison_markdown

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    ref = load_reference(args.paper)
    models, data, entry = plan(args, ref)
    prefix = args.prefix or f"reproduce-{args.paper}-{args.dataset}"
    progress = not args.no_progress
    for selection in ("valid", "literature"):
        run_id = f"{prefix}-{selection}"
        if (Path(args.runs_dir) / run_id / "config.json").exists():
            _check_same(args, models, Path(args.runs_dir) / run_id)
            print(f"== {selection} run: resuming {Path(args.runs_dir) / run_id}", flush=True)
            results = resume(run_id, args.runs_dir, args.device, progress=progress)
        else:
            print(f"== {selection} run: {Path(args.runs_dir) / run_id}", flush=True)
            results = experiment(args, ref, models, data, selection, run_id).run(progress)
        if not any(m["seeds_ok"] for m in results.summary["models"].values()):
            raise UserError(f"the {selection} run {run_id} trained no model; see its results.md")
    table = comparison(ref, args.dataset, Path(args.runs_dir) / f"{prefix}-valid", Path(args.runs_dir) / f"{prefix}-literature")
    text = comparison_markdown(table, ref, args.dataset, entry)
    from ..io import write_json, write_text

    write_text(Path(args.runs_dir) / f"{prefix}.md", text)
    write_json(Path(args.runs_dir) / f"{prefix}.json", table)
    print()
    print(text)
    return 0
