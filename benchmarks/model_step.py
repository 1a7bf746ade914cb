"""One training step per model (forward = model.loss, backward) against the scoring-matmul bound.

Usage: python benchmarks/model_step.py [--dataset diginetica] [--data-dir datasets] [--models all]
                                       [--batch-size 100] [--batches 8] [--rounds 3] [--optimizer]
                                       [--set attenmixer:dim=100 --set attenmixer:heads=4]
                                       [--keep-freed-memory] [--clock cpu|wall] [--breakdown]
The unavoidable cost of a step is scoring every session against every item: s @ E.T for s [B, d] and
E [|V|, d], forward and backward (the gradients of s and E). For each model this prints the median
milliseconds per step of its forward and backward on the same batches (collated up front, so graph
building is not timed; benchmarks/graph_build.py measures that), the matmul bound for the model's own
B and d, and the ratio step / bound. Models and the bound are timed interleaved, round by round, in one
process with one thread, so load from other processes hits them alike; the default clock is the
process's CPU time (user + system, so page faults count), which a busy machine disturbs far less than
wall time. `--optimizer` adds the model's optimizer step (training.make_optimizer: Adam/AdamW over every
parameter, the item table included) as its own column, and `--fused-optimizer` the same optimizer with
torch's fused kernel. `--keep-freed-memory` tells glibc's malloc to keep freed memory instead of returning
every block over 32 MB to the system (a [|V|, d] tensor at d = 256 on Diginetica is 44 MB, and each
fresh one then costs page faults on every step).

`--breakdown` splits each step by the clock, timed in the same rounds: `head` is the model's scorer and
full-softmax cross-entropy alone, forward and backward, on the model's own session vectors and candidate
table of the same batch (detached copies); `softmax` is that cross-entropy alone on random [B, N] scores;
`bound*` the three products as the suite computes them (item-major scores, scoring.py). From them:
scorer passes = head - bound* - softmax (norms, table dropout, the gradient's assembly), encoder =
step - head (embedding lookups, encoder, readout, their backward), and floor = (bound* + softmax) / bound,
the least step / bound of a full-softmax model with these kernels, however cheap its encoder.
`flops` is the step's matmul FLOPs (torch.utils.flop_counter: products, linear layers, convolutions,
attention; forward and backward) over the bound's 6·B·N·d, and `least` = (bound* + softmax + the FLOPs
beyond the bound's at `peak`) / bound, the step / bound if the model's own matmuls ran at `peak` (the
best rate of a cache-resident 512 x 256 x 512 GEMM, timed in the same rounds) and nothing else but the
softmax cost anything.
"""

import argparse
import inspect
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sbr_bench.data.dataset import load_dataset
from sbr_bench.data.graphs import ExampleLoader
from sbr_bench.models.base import SBRModel
from sbr_bench.models.registry import build_model, resolve_names, spec_for, ModelSpec
from sbr_bench.models.scoring import cross_entropy, table_scores
from sbr_bench.training import make_optimizer


clock = time.process_time


def matmul_step(s: torch.Tensor, items: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    t0 = clock()
    scores = s @ items.t()
    t1 = clock()
    scores.backward(grad)
    t2 = clock()
    s.grad = items.grad = None
    return t1 - t0, t2 - t1


def model_step(model, batch, optimizer=None) -> tuple[float, float, float]:
    t0 = clock()
    loss, _ = model.loss(batch)
    float(loss.detach())
    t1 = clock()
    model.zero_grad(set_to_none=True)
    loss.backward()
    t2 = clock()
    if optimizer is not None:
        optimizer.step()
    return t1 - t0, t2 - t1, clock() - t2


def head_inputs(model, batches) -> tuple[list, torch.Tensor, torch.Tensor, list]:
    """Detached copies of the model's session vectors for each batch and of its candidate table (a tail
    slice of a copy of the embedding table when the model scores against it, as in training), the copied
    table itself (a leaf), and the targets."""
    with torch.no_grad():
        reprs = [model.session_repr(b) for b in batches]
    enc = reprs[0][2]
    table = (model.embedding.weight if enc.items is None else enc.items).detach().clone().requires_grad_()
    items = table[1:] if enc.items is None else table
    return [s.detach().clone().requires_grad_() for s, _, _ in reprs], items, table, [b.y - 1 for b in batches]


def head_step(model, s: torch.Tensor, items: torch.Tensor, table: torch.Tensor, target: torch.Tensor) -> float:
    t0 = clock()
    cross_entropy(model.scorer(s, items), target).backward()
    t = clock() - t0
    s.grad = table.grad = None
    return t


def softmax_step(scores: torch.Tensor, target: torch.Tensor) -> float:
    t0 = clock()
    cross_entropy(scores, target).backward()
    t = clock() - t0
    scores.grad = None
    return t


def suite_products(s: torch.Tensor, table: torch.Tensor, grad: torch.Tensor) -> float:
    t0 = clock()
    table_scores(s, table[1:]).backward(grad)
    t = clock() - t0
    s.grad = table.grad = None
    return t


PEAK_GEMM = (torch.randn(512, 256), torch.randn(256, 512))


def peak_rate() -> float:
    """FLOP/s of a cache-resident GEMM, the most a model's own (small) matmuls could reach."""
    a, b = PEAK_GEMM
    t0 = clock()
    for _ in range(10):
        a @ b
    return 10 * 2 * a.shape[0] * a.shape[1] * b.shape[1] / max(clock() - t0, 1e-9)


def overrides(pairs: list[str], name: str) -> dict:
    """--set MODEL:KEY=VALUE entries for `name` (values parsed as int, float, bool or kept as text)."""
    out = {}
    for pair in pairs:
        model, _, assignment = pair.partition(":")
        key, _, text = assignment.partition("=")
        if model != name:
            continue
        for parse in (int, float, {"true": True, "false": False}.__getitem__, str):
            try:
                out[key] = parse(text.lower() if parse is not str else text)
                break
            except (ValueError, KeyError):
                pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="diginetica", help="dataset name (e.g. diginetica, synthetic:diginetica)")
    ap.add_argument("--data-dir", default="datasets")
    ap.add_argument("--models", default="all", help="comma-separated neural models, or 'all'")
    ap.add_argument("--batch-size", type=int, default=100, help="0 = each model's own default batch size")
    ap.add_argument("--batches", type=int, default=8, help="batches timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optimizer", action="store_true", help="also time the optimizer step")
    ap.add_argument("--fused-optimizer", action="store_true", help="time the optimizer with fused=True")
    ap.add_argument("--set", action="append", default=[], metavar="MODEL:KEY=VALUE", help="config override")
    ap.add_argument("--keep-freed-memory", action="store_true", help="glibc mallopt, see the module doc")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--breakdown", action="store_true", help="split the step: head, softmax, encoder (module doc)")
    args = ap.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.keep_freed_memory:
        from sbr_bench.env import keep_freed_memory  # what the trainer does at start

        if not keep_freed_memory():
            raise SystemExit("--keep-freed-memory: not glibc, or MALLOC_*_THRESHOLD_ already set")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    names = [n for n in resolve_names(args.models) if isinstance(spec_for(n), ModelSpec)]
    setups = {}
    for name in names:
        model, cfg = build_model(name, ds.n_items, overrides(args.set, name))
        model.prepare(ds.train)
        model.train()
        B = args.batch_size or int(cfg["batch_size"])
        loader = ExampleLoader(ds.train, B, ds.n_items, shuffle=True, extra=model.extra_graphs)
        batches = [b for _, b in zip(range(args.batches), loader.batches(0))]
        d = cfg["dim"]
        bound = (torch.randn(B, d, requires_grad=True), torch.randn(ds.n_items, d, requires_grad=True),
                 torch.randn(B, ds.n_items))
        optimizer = make_optimizer(model, cfg)[0] if args.optimizer or args.fused_optimizer else None
        if args.fused_optimizer:
            accepted = inspect.signature(type(optimizer)).parameters
            kwargs = {k: v for k, v in optimizer.defaults.items() if k in accepted}
            optimizer = type(optimizer)(model.parameters(), **{**kwargs, "fused": True})
        model_step(model, batches[0], optimizer)  # warm-up (allocations, lazy init)
        matmul_step(*bound)
        parts = None
        if args.breakdown and type(model).loss is SBRModel.loss:  # the scorer + cross-entropy head
            item_major = torch.randn(ds.n_items, B).t()
            products = (torch.randn(B, d, requires_grad=True), torch.randn(ds.n_items + 1, d, requires_grad=True),
                        item_major)
            with FlopCounterMode(display=False) as flops:
                model_step(model, batches[0])
            parts = {"head": head_inputs(model, batches), "scores": item_major.clone().requires_grad_(),
                     "products": products, "flops": flops.get_total_flops() / (6 * B * ds.n_items * d)}
        times = {k: [] for k in ("fwd", "bwd", "opt", "mm_f", "mm_b", "head", "softmax", "bound*")}
        setups[name] = (model, batches, bound, optimizer, parts, times)

    peaks = []
    for _ in range(args.rounds):
        peaks.append(peak_rate())
        for name, (model, batches, bound, optimizer, parts, t) in setups.items():
            for i, batch in enumerate(batches):
                f, b, o = model_step(model, batch, optimizer)
                mf, mb = matmul_step(*bound)
                for key, value in zip(("fwd", "bwd", "opt", "mm_f", "mm_b"), (f, b, o, mf, mb)):
                    t[key].append(value * 1e3)
                if parts is not None:
                    hs, items, table, targets = parts["head"]
                    t["head"].append(head_step(model, hs[i], items, table, targets[i]) * 1e3)
                    t["softmax"].append(softmax_step(parts["scores"], targets[i]) * 1e3)
                    t["bound*"].append(suite_products(*parts["products"]) * 1e3)

    print(f"dataset {args.dataset}: {ds.n_items:,} items; {args.batches} batches x {args.rounds} rounds, "
          f"{torch.get_num_threads()} thread(s), {args.clock} clock"
          f"{', freed memory kept' if args.keep_freed_memory else ''}; median ms per step")
    head = f"{'model':<16}{'B':>5}{'d':>5}{'forward':>9}{'backward':>9}"
    show_optim = args.optimizer or args.fused_optimizer
    head += f"{'optim':>8}" if show_optim else ""
    print(head + f"{'step':>9}{'bound':>8}{'ratio':>7}")
    for name, (model, batches, bound, optimizer, parts, t) in setups.items():
        med = {k: statistics.median(v) for k, v in t.items() if v}
        step = med["fwd"] + med["bwd"]
        mm = med["mm_f"] + med["mm_b"]
        B, d = bound[0].shape
        row = f"{name:<16}{B:>5}{d:>5}{med['fwd']:>9.1f}{med['bwd']:>9.1f}"
        row += f"{med['opt']:>8.1f}" if show_optim else ""
        print(row + f"{step:>9.1f}{mm:>8.1f}{step / mm:>7.2f}")
    print("step = forward + backward (the optimizer step is not included); bound = s @ E.T forward + backward "
          "for the model's B and d; ratio = step / bound")
    if args.breakdown:
        peak = max(peaks)
        print(f"\npeak {peak / 1e9:.1f} GFLOP/s (512 x 256 x 512 GEMM, best of {args.rounds} rounds)")
        print(f"{'model':<16}{'bound':>8}{'bound*':>8}{'softmax':>9}{'head':>8}{'scorer':>8}{'step':>8}"
              f"{'encoder':>9}{'floor':>7}{'flops':>7}{'least':>7}{'ratio':>7}")
        for name, (model, batches, bound, optimizer, parts, t) in setups.items():
            if parts is None:
                print(f"{name:<16}  (its own loss: no breakdown)")
                continue
            med = {k: statistics.median(v) for k, v in t.items() if v}
            step, mm = med["fwd"] + med["bwd"], med["mm_f"] + med["mm_b"]
            scorer = med["head"] - med["bound*"] - med["softmax"]
            B, d = bound[0].shape
            own = (parts["flops"] - 1) * 6 * B * ds.n_items * d / peak * 1e3  # ms: the model's own matmuls at peak
            print(f"{name:<16}{mm:>8.1f}{med['bound*']:>8.1f}{med['softmax']:>9.1f}{med['head']:>8.1f}{scorer:>8.1f}"
                  f"{step:>8.1f}{step - med['head']:>9.1f}{(med['bound*'] + med['softmax']) / mm:>7.2f}"
                  f"{parts['flops']:>7.2f}{(med['bound*'] + med['softmax'] + own) / mm:>7.2f}{step / mm:>7.2f}")
        print("bound* = the products as the suite computes them; head = scorer + cross-entropy alone; scorer = "
              "head - bound* - softmax; encoder = step - head; floor = (bound* + softmax) / bound; flops = the "
              "step's matmul FLOPs / the bound's; least = (bound* + softmax + the other FLOPs at peak) / bound")


if __name__ == "__main__":
    main()
