"""DHCN's hypergraph convolution, forward + backward, in several sparse implementations side by side.

Usage: python benchmarks/hypergraph_conv.py [--dataset ../shared/datasets/diginetica/srgnn_protocol]
                                            [--data-dir datasets] [--hyperedges sessions] [--dim 100]
                                            [--layers 3] [--rounds 5] [--threads 1] [--keep-freed-memory]
                                            [--variants name,name,...]
Builds the item hypergraph of the dataset's training split as DHCN does (A = D^-1 H B^-1 H^T over all
items) and times X_h = mean(X, AX, ..., A^L X) for a random float32 table [N+1, d] (row 0 = padding, as
the model's embedding), forward and backward (the table's gradient for a random upstream gradient), for
each implementation: the torch CSR factor pair the model used before (`torch_csr_factors`, the
reference), torch CSR / COO of the explicit A, scipy CSR through a custom autograd Function,
index_select + index_add_ over the factors, weighted embedding bags (FBGEMM on CPU) per layer or as one
Function with a Horner-form backward, with and without a locality (reverse Cuthill-McKee) order, and
the model's own `DHCNEncoder.convolved_items` (`dhcn.py`). Variants are timed interleaved, round by
round, in one process on the process CPU clock; it prints the median ms of forward and backward, the
step ratio to the reference, the largest absolute difference of output and gradient against the
reference, and one dense scoring product s @ E.T forward + backward (B = 100) as a scale.
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from sbr_bench.data.dataset import load_dataset
from sbr_bench.models.dhcn import (DHCNEncoder, hyperedge_items, hypergraph_factors, hypergraph_operator,
                                   locality_order)

clock = time.process_time


def csr_parts(m):
    m = sp.csr_matrix(m)
    m.sort_indices()
    return (torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)))


def torch_csr(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(*csr_parts(m), m.shape)


def bag(parts, x):
    crow, col, val = parts
    return F.embedding_bag(col, x, crow, mode="sum", per_sample_weights=val, include_last_offset=True)


class Linear(torch.autograd.Function):
    """y = apply(x), backward apply_t(g): one layer of any sparse product."""

    @staticmethod
    def forward(ctx, x, apply, apply_t):
        ctx.apply_t = apply_t
        return apply(x)

    @staticmethod
    def backward(ctx, g):
        return ctx.apply_t(g), None, None


def per_layer(apply, apply_t, layers):
    """Autograd through L single-layer Functions, layers stacked and averaged (the former model code)."""
    def conv(weight):
        x = weight[1:]
        outs = [x]
        for _ in range(layers):
            x = Linear.apply(x, apply, apply_t)
            outs.append(x)
        return torch.stack(outs).sum(0) / len(outs)
    return conv


class Horner(torch.autograd.Function):
    """All layers in one Function; backward c * (g + A^T(g + A^T(...))) without saved tensors."""

    @staticmethod
    def forward(ctx, weight, apply, apply_t, layers):
        ctx.apply_t, ctx.layers = apply_t, layers
        x = weight[1:]
        total = x.clone()
        for _ in range(layers):
            x = apply(x)
            total.add_(x)
        return total.div_(layers + 1)

    @staticmethod
    def backward(ctx, grad):
        g = grad / (ctx.layers + 1)
        r = g
        for _ in range(ctx.layers):
            r = ctx.apply_t(r).add_(g)
        out = grad.new_zeros(grad.shape[0] + 1, grad.shape[1])
        out[1:] = r
        return out, None, None, None


def horner(apply, apply_t, layers):
    return lambda weight: Horner.apply(weight, apply, apply_t, layers)


def reordered(apply, apply_t, order, layers):
    """Horner on rows/columns permuted by `order`: gather in, scatter back out."""
    order = torch.from_numpy(order)
    rank = torch.argsort(order)

    def conv(weight):
        inner = torch.cat([weight[:1], weight[1:].index_select(0, order)])
        return Horner.apply(inner, apply, apply_t, layers).index_select(0, rank)
    return conv


def scipy_apply(m):
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    return lambda x: torch.from_numpy(m @ x.detach().numpy())


def index_add_factored(left, right):
    """A x = L (R x) with each CSR product as gather rows * value, index_add_ into the output rows."""
    def product(m):
        m = m.tocoo()
        rows, cols = torch.from_numpy(m.row.astype(np.int64)), torch.from_numpy(m.col.astype(np.int64))
        vals = torch.from_numpy(m.data.astype(np.float32))[:, None]
        return lambda x: x.new_zeros(m.shape[0], x.shape[1]).index_add_(0, rows, x.index_select(0, cols) * vals)
    fl, fr = product(left), product(right)
    return lambda x: fl(fr(x))


def variants(a, left, right, layers, n_items, ds, hyperedges):
    at = a.T.tocsr()
    v = {}
    csr_l, csr_r, csr_lt, csr_rt = (torch_csr(m) for m in (left, right, left.T, right.T))
    v["torch_csr_factors"] = per_layer(lambda x: torch.sparse.mm(csr_l, torch.sparse.mm(csr_r, x)),
                                       lambda g: torch.sparse.mm(csr_rt, torch.sparse.mm(csr_lt, g)), layers)
    csr_a, csr_at = torch_csr(a), torch_csr(at)
    v["torch_csr_A"] = per_layer(lambda x: torch.sparse.mm(csr_a, x), lambda g: torch.sparse.mm(csr_at, g), layers)
    v["torch_csr_A_horner"] = horner(lambda x: torch.sparse.mm(csr_a, x), lambda g: torch.sparse.mm(csr_at, g),
                                     layers)
    coo = torch.sparse_coo_tensor(np.stack([a.tocoo().row, a.tocoo().col]), a.tocoo().data.astype(np.float32),
                                  a.shape).coalesce()

    def coo_native(weight):  # torch's own autograd through sparse.mm (transposes A in every backward)
        x = weight[1:]
        outs = [x]
        for _ in range(layers):
            x = torch.sparse.mm(coo, x)
            outs.append(x)
        return torch.stack(outs).sum(0) / len(outs)
    v["torch_coo_A_autograd"] = coo_native
    v["scipy_A"] = horner(scipy_apply(a), scipy_apply(at), layers)
    v["scipy_factors"] = horner(lambda x, f=scipy_apply(left), g=scipy_apply(right): f(g(x)),
                                lambda x, f=scipy_apply(right.T), g=scipy_apply(left.T): f(g(x)), layers)
    v["index_add_factors"] = horner(index_add_factored(left, right), index_add_factored(right.T, left.T), layers)
    pa, pat = csr_parts(a), csr_parts(at)
    v["bag_A_layers"] = per_layer(lambda x: bag(pa, x), lambda g: bag(pat, g), layers)
    v["bag_A_horner"] = horner(lambda x: bag(pa, x), lambda g: bag(pat, g), layers)
    pl, pr, plt, prt = (csr_parts(m) for m in (left, right, left.T, right.T))
    v["bag_factors_horner"] = horner(lambda x: bag(pl, bag(pr, x)), lambda g: bag(prt, bag(plt, g)), layers)
    order = locality_order(a)
    ap = a[order][:, order].tocsr()
    ppa, ppat = csr_parts(ap), csr_parts(ap.T)
    v["bag_A_rcm_horner"] = reordered(lambda x: bag(ppa, x), lambda g: bag(ppat, g), order, layers)
    enc = DHCNEncoder(n_items, layers, "mean", hyperedges)
    enc.prepare(ds.train)
    enc.train()
    v["dhcn.py"] = enc.convolved_items
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/datasets/diginetica/srgnn_protocol")
    ap.add_argument("--data-dir", default="datasets")
    ap.add_argument("--hyperedges", default="sessions", choices=("sessions", "prefixes"))
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep-freed-memory", action="store_true", help="glibc mallopt, as the trainer does")
    ap.add_argument("--variants", default="", help="comma-separated subset (the reference is always run)")
    args = ap.parse_args()
    if args.keep_freed_memory:
        from sbr_bench.env import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--keep-freed-memory: not glibc, or MALLOC_*_THRESHOLD_ already set")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    edge_ids, items = hyperedge_items(ds.train, args.hyperedges)
    left, right = hypergraph_factors(edge_ids, items, ds.n_items)
    a = hypergraph_operator(edge_ids, items, ds.n_items, factors=(left, right)).tocsr()
    N, d = ds.n_items, args.dim
    v = variants(a, left, right, args.layers, N, ds, args.hyperedges)
    if args.variants:
        keep = {"torch_csr_factors", *args.variants.split(",")}
        v = {k: f for k, f in v.items() if k in keep}
    weight = torch.randn(N + 1, d) / d ** 0.5
    upstream = torch.randn(N, d)
    s, table, g_scores = torch.randn(100, d, requires_grad=True), torch.randn(N, d, requires_grad=True), \
        torch.randn(100, N)

    def run(conv):
        w = weight.clone().requires_grad_()
        t0 = clock()
        out = conv(w)
        t1 = clock()
        out.backward(upstream)
        t2 = clock()
        return t1 - t0, t2 - t1, out.detach(), w.grad

    def scoring():
        t0 = clock()
        (s @ table.t()).backward(g_scores)
        s.grad = table.grad = None
        return clock() - t0

    results = {}
    for name, conv in v.items():  # warm-up, and outputs/gradients for the comparison
        _, _, out, grad = run(conv)
        results[name] = {"fwd": [], "bwd": [], "out": out, "grad": grad}
    scoring()
    dense = []
    for _ in range(args.rounds):
        for name, conv in v.items():
            f, b, _, _ = run(conv)
            results[name]["fwd"].append(f * 1e3)
            results[name]["bwd"].append(b * 1e3)
        dense.append(scoring() * 1e3)

    print(f"{args.dataset}: N = {N:,} items, {right.shape[0]:,} hyperedges ({args.hyperedges}), nnz(H) = "
          f"{right.nnz:,}, nnz(A) = {a.nnz:,}; d = {d}, {args.layers} layers, {torch.get_num_threads()} thread(s), "
          f"{args.rounds} rounds, CPU clock{', freed memory kept' if args.keep_freed_memory else ''}; "
          f"MKL {torch.backends.mkl.is_available()}")
    ref = results["torch_csr_factors"]
    ref_step = statistics.median(ref["fwd"]) + statistics.median(ref["bwd"])
    print(f"{'variant':<22}{'forward':>9}{'backward':>10}{'step':>9}{'ratio':>7}{'max|dout|':>11}{'max|dgrad|':>12}")
    for name, r in results.items():
        f, b = statistics.median(r["fwd"]), statistics.median(r["bwd"])
        d_out = (r["out"] - ref["out"]).abs().max().item()
        d_grad = (r["grad"] - ref["grad"]).abs().max().item()
        print(f"{name:<22}{f:>9.1f}{b:>10.1f}{f + b:>9.1f}{(f + b) / ref_step:>7.2f}{d_out:>11.1e}{d_grad:>12.1e}")
    print(f"{'dense s@E.T (B=100)':<22}{'':>9}{'':>10}{statistics.median(dense):>9.1f}"
          f"{statistics.median(dense) / ref_step:>7.2f}")
    print("ms are medians per call; ratio = step / torch_csr_factors's step; max|d...| against torch_csr_factors")


if __name__ == "__main__":
    main()
