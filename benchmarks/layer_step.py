"""Training steps of the models whose encoders are `sbr_bench.nn` MessagePassing layers, against the same
models with the layers they had before (tests/legacy_layers.py: plain modules, hand-written scatter).

Usage: python benchmarks/layer_step.py [--dataset diginetica] [--data-dir datasets]
                                       [--models srgnn,gcsan,sgnnhn,lessr] [--batches 8] [--rounds 5]
For each model the "before" twin is a copy whose propagation modules are swapped for the old ones with the
same weights (the parameter names are the same), so both compute the same loss on the same batches (checked);
forward + backward are timed interleaved, round by round, in one process with one thread, on the CPU clock.
Prints the median ms per step of each and the ratio now / before.
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import legacy_layers  # noqa: E402

from sbr_bench.data.dataset import load_dataset  # noqa: E402
from sbr_bench.data.graphs import ExampleLoader  # noqa: E402
from sbr_bench.models.registry import build_model  # noqa: E402
from sbr_bench.nn import EOPAConv, GatedSessionConv, SGATConv  # noqa: E402


def legacy_twin(model):
    """A copy of `model` with every sbr_bench.nn layer replaced by its old module, same weights."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, GatedSessionConv):
            old = legacy_layers.GatedSessionCell(module.edge_in.in_features, module.gate_flip_compat,
                                                 module.edge_count_weights)
        elif isinstance(module, EOPAConv):
            old = legacy_layers.EOPA(module.fc_self.in_features, module.fc_self.out_features, module.feat_drop.p)
        elif isinstance(module, SGATConv):
            old = legacy_layers.SGAT(module.fc_q.in_features, module.fc_q.out_features, module.fc_v.out_features,
                                     module.feat_drop.p)
        else:
            continue
        old.load_state_dict(module.state_dict())
        parent_name, _, attr = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        if isinstance(parent, torch.nn.ModuleList):
            parent[int(attr)] = old
        else:
            setattr(parent, attr, old)
    return twin


def step(model, batch) -> tuple[float, float]:
    t0 = time.process_time()
    loss, _ = model.loss(batch)
    value = float(loss.detach())
    model.zero_grad(set_to_none=True)
    loss.backward()
    return time.process_time() - t0, value


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="diginetica")
    ap.add_argument("--data-dir", default="datasets")
    ap.add_argument("--models", default="srgnn,gcsan,sgnnhn,lessr")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    print(f"dataset {args.dataset}: {ds.n_items:,} items; {args.batches} batches x {args.rounds} rounds, "
          "1 thread, CPU clock; median ms per training step (forward + backward)")
    print(f"{'model':<10}{'before':>9}{'now':>9}{'now/before':>12}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, cfg = build_model(name, ds.n_items)
        model.prepare(ds.train)
        model.eval()  # no dropout: both twins must compute the same loss
        twin = legacy_twin(model).eval()
        loader = ExampleLoader(ds.train, int(cfg["batch_size"]), ds.n_items, shuffle=True, extra=model.extra_graphs)
        batches = [b for _, b in zip(range(args.batches), loader.batches(0))]
        times = {"now": [], "before": []}
        for batch in batches[:1]:  # warm-up
            step(model, batch), step(twin, batch)
        for _ in range(args.rounds):
            for batch in batches:
                t_now, loss_now = step(model, batch)
                t_before, loss_before = step(twin, batch)
                if abs(loss_now - loss_before) > 1e-5 * max(1.0, abs(loss_before)):
                    raise SystemExit(f"{name}: losses differ ({loss_now} vs {loss_before})")
                times["now"].append(t_now * 1e3)
                times["before"].append(t_before * 1e3)
        now, before = statistics.median(times["now"]), statistics.median(times["before"])
        print(f"{name:<10}{before:>9.1f}{now:>9.1f}{now / before:>11.3f}x")


if __name__ == "__main__":
    main()
