"""`sbr-bench sweep`: one parameter over a list of values, every point a normal run with seeds
(paper Figures 5 and 6: levels L and heads H of Atten-Mixer). Resumable: finished points are kept, an
interrupted point continues from its checkpoints."""

from __future__ import annotations

import argparse
import json
import re

from ..errors import UserError
from .run import add_dataset_arguments

HELP = "sweep one model parameter over values (each point a normal run with seeds; resumable)"


def add_arguments(p) -> None:
    p.add_argument("--model", default="attenmixer", help="model name or ENCODER+READOUT (default: attenmixer)")
    p.add_argument("--param", required=True, help="config key to vary, e.g. levels or heads")
    p.add_argument("--values", required=True, help="A..B (integers) or comma-separated values, e.g. 1..8 or 1,2,4,8")
    add_dataset_arguments(p)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed overrides for every point")
    p.add_argument("--device", default="auto")
    p.add_argument("--sweep-id", help="name prefix of the point runs (default: sweep-MODEL-PARAM-DATASET)")
    p.add_argument("--no-progress", action="store_true")


def parse_values(text: str) -> list:
    m = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise UserError(f"--values {text}: empty range")
        return list(range(a, b + 1))
    values = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        try:
            values.append(json.loads(part))
        except json.JSONDecodeError:
            values.append(part)
    if not values:
        raise UserError(f"--values {text}: no values (use A..B or a comma-separated list)")
    return values


def point_args(args, value) -> argparse.Namespace:
    """The `run` arguments of one sweep point."""
    return argparse.Namespace(
        models=args.model, dataset=args.dataset, data_dir=args.data_dir, protocol=args.protocol,
        valid_fraction=args.valid_fraction, protocol_param=args.protocol_param, runs_dir=args.runs_dir, seeds=args.seeds,
        seed_list=None, epochs=args.epochs, device=args.device, batch_size=None,
        set=list(args.set) + [f"{args.param}={json.dumps(value)}"], run_id=None, resume=None, checkpoint_every=None,
        deterministic=False, no_progress=args.no_progress, profile=False)


def main(args) -> int:
    from ..env import environment
    from ..models.registry import model_config
    from ..runs import RunDir
    from ..train import resolve_device
    from .run import dataset_spec, load_dataset, new_config, train_unit

    values = parse_values(args.values)
    if args.param not in model_config(args.model):
        raise UserError(f"--param {args.param}: '{args.model}' has no such parameter; it has: "
                        f"{', '.join(sorted(model_config(args.model)))}")
    sweep_id = args.sweep_id or re.sub(r"[^A-Za-z0-9_.+-]", "_", f"sweep-{args.model}-{args.param}-{args.dataset}")
    dataset = load_dataset(dataset_spec(args))
    device = resolve_device(args.device)
    rows = []
    for value in values:
        run_id = f"{sweep_id}-{args.param}{value}"
        config = new_config(point_args(args, value), dataset)
        config["sweep"] = {"id": sweep_id, "model": args.model, "param": args.param, "value": value}
        try:
            run_dir = RunDir.open(run_id, args.runs_dir)
        except UserError:  # not started yet
            run_dir = RunDir.create(args.runs_dir, run_id, config, environment())
            print(f"point {args.param}={value}: {run_dir.path}")
        else:  # continue it, but only with the same settings: a sweep must not mix configurations
            recorded = run_dir.config()
            same = ("cfg", "seeds", "deterministic")
            if any(recorded[k] != config[k] for k in same) or \
                    recorded["dataset"]["fingerprint"] != config["dataset"]["fingerprint"]:
                raise UserError(f"sweep point {run_dir.path} was started with other settings (model config, "
                                "seeds or dataset); use another --sweep-id or the original options")
            config = recorded
            print(f"point {args.param}={value}: continuing {run_dir.path}")
        for seed in config["seeds"]:
            train_unit(run_dir, args.model, config["cfg"][args.model], seed, dataset, device, config,
                       not args.no_progress)
        test = run_dir.write_results()["models"][args.model]["test"]
        rows.append((value, test.get("HR@20", {}).get("mean"), test.get("MRR@20", {}).get("mean")))
    print(f"\n{args.model} on {args.dataset}, {args.param} sweep (test, mean over {len(config['seeds'])} seed(s)):")
    for value, hr, mrr in rows:
        fmt = lambda x: "failed" if x is None else f"{x:.2f}"  # noqa: E731
        print(f"  {args.param}={value!s:6s} HR@20 {fmt(hr):>7s}  MRR@20 {fmt(mrr):>7s}")
    return 0
