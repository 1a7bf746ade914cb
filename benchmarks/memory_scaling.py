"""Host memory of a large item catalogue: measured peak RSS of SR-GNN training steps and of one evaluation
batch, against the formula of the README ("Memory for large catalogues").

Usage: python benchmarks/memory_scaling.py [--items 100000,1000000] [--dim 100] [--batch-size 100]
                                           [--eval-batch 500] [--world 1] [--project 1000000,10000000]
Every measurement runs in a fresh child process (CPU, 1 thread) on random sessions over N items; the peak
resident set (VmHWM, reset between phases through /proc/self/clear_refs) is reported above the RSS with
the model built. --world 2 measures one rank of a 2-process DistributedDataParallel step (gloo), with the
local share of each batch. --project prints the formula's numbers for catalogues not measured (10M items
needs ~40 GiB; do not run it on a small machine).

Formula (bytes; E = (N+1)·d·4 the item table, L = B·N·4 the training logits of the B examples of one
process), fitted on measurements with B = 50..400 at N = 1M and checked at N = 100k:
  model               E  (+ the encoder's few weights)
  training peak       max(3E, 2E + 3L) above the model: the fused Adam step holds the gradient and the
                      two moments (the foreach implementation needed about three more table-sized
                      temporaries, 6E); backward holds the two moments plus the logits, their
                      log-softmax and their gradient.
                      Under DDP (per process, L of the local share): max(3E, 3E + 3L), as the gradient
                      bucket (the gradient itself, gradient_as_bucket_view) stays allocated; without the
                      bucket view DDP adds another E
  evaluation batch    Be·chunk·4 above the resting model: one float32 score block (chunk =
                      MAX_SCORE_CELLS / Be items: 128 MiB once N > 67,108), plus some tens of MiB for the
                      batch's graphs, the encoder and the counting temporaries (not in the formula)
"""

import argparse
import json
import os
import subprocess
import sys

GIB = 2**30
MIB = 2**20


def predict(n_items: int, dim: int, batch: int, eval_batch: int, world: int = 1) -> dict:
    """The README formula, in bytes."""
    from sbr_bench.evaluate import MAX_SCORE_CELLS

    table = (n_items + 1) * dim * 4
    logits = -(-batch // world) * n_items * 4  # the largest share of a global batch
    chunk = max(1, min(n_items, MAX_SCORE_CELLS // eval_batch))
    resting = 2 * table if world == 1 else 3 * table  # Adam's moments (+ DDP's gradient bucket)
    return {"model": table, "train_steady": max(3 * table, resting + 3 * logits), "eval": eval_batch * chunk * 4}


def child(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from sbr_bench.data.graphs import ExampleLoader
    from sbr_bench.data.sessions import Sessions, Split
    from sbr_bench.evaluate import evaluate
    from sbr_bench.models.registry import build_model
    from sbr_bench.profiling import current_rss_mb, peak_rss_mb, reset_peak_rss
    from sbr_bench.training import _LossOf, make_optimizer

    n, rank, world = args.items, args.rank, args.world
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 9, size=2000)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    split = Split.all_prefixes(Sessions(rng.integers(1, n + 1, size=int(offsets[-1])), offsets))
    evaluation = Split(split.sessions, split.ex_seq[: args.eval_batch], split.ex_len[: args.eval_batch])
    cfg = dict(dim=args.dim, lr=1e-3, l2=1e-5, lr_step=3, lr_decay=0.1, optimizer="adam")
    torch.manual_seed(0)
    before = current_rss_mb() * MIB
    model, _ = build_model("srgnn", n, cfg)
    net = model
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo", rank=rank, world_size=world)
        net = DistributedDataParallel(_LossOf(model), static_graph=True,
                                      gradient_as_bucket_view=not args.no_bucket_view)
    optimizer, _ = make_optimizer(model, cfg)
    with_model = current_rss_mb() * MIB
    loader = ExampleLoader(split, args.batch_size, n, shuffle=True, rank=rank, world=world)
    batches = loader.batches(0)
    peaks = []
    for _ in range(3):  # the first step allocates Adam's moments; the later ones show the steady state
        batch = next(batches)
        reset_peak_rss()
        loss, _ = net(batch) if world > 1 else model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        peaks.append(peak_rss_mb() * MIB)
    optimizer.zero_grad(set_to_none=True)  # evaluation holds no gradients
    resting = current_rss_mb() * MIB
    reset_peak_rss()
    evaluate(model, evaluation, n, batch_size=args.eval_batch)
    eval_peak = peak_rss_mb() * MIB
    print(json.dumps({"model": with_model - before, "rss_with_model": with_model,
                      "train_first": peaks[0] - with_model, "train_steady": max(peaks[1:]) - with_model,
                      "train_steady_total": max(peaks[1:]), "eval": eval_peak - resting,
                      "eval_total": eval_peak, "local_batch": int(batch.num_graphs)}))
    if world > 1:
        dist.destroy_process_group()


def measure(args, n_items: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--items", str(n_items), "--dim", str(args.dim),
           "--batch-size", str(args.batch_size), "--eval-batch", str(args.eval_batch), "--world", str(args.world)]
    cmd += ["--no-bucket-view"] if args.no_bucket_view else []
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    procs = [subprocess.Popen(cmd + ["--rank", str(r)], stdout=subprocess.PIPE, text=True, env=env)
             for r in range(args.world)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"child failed for {n_items} items")
    return json.loads(outs[0].strip().splitlines()[-1])  # rank 0; the ranks are symmetric


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="100000,1000000", help="comma-separated catalogue sizes to measure")
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100, help="global training batch")
    ap.add_argument("--eval-batch", type=int, default=500)
    ap.add_argument("--world", type=int, default=1, help="processes (2: one rank of a DDP step, gloo)")
    ap.add_argument("--project", default="1000000,10000000", help="catalogue sizes to compute only")
    ap.add_argument("--port", type=int, default=29531)
    ap.add_argument("--no-bucket-view", action="store_true",
                    help="DDP without gradient_as_bucket_view (the trainer uses it; shows what it saves)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.items = int(args.items)
        return child(args)

    print(f"SR-GNN d={args.dim}, training batch {args.batch_size} over {args.world} process(es), evaluation "
          f"batch {args.eval_batch}; MiB above the RSS with the model built (per process)")
    print(f"{'items':>10} {'phase':<14} {'measured':>9} {'predicted':>9} {'ratio':>6}")
    for n in (int(x) for x in args.items.split(",") if x):
        got = measure(args, n)
        want = predict(n, args.dim, args.batch_size, args.eval_batch, args.world)
        for phase in ("model", "train_steady", "eval"):
            print(f"{n:>10} {phase:<14} {got[phase] / MIB:>9.0f} {want[phase] / MIB:>9.0f} "
                  f"{got[phase] / want[phase]:>6.2f}")
        print(f"{n:>10} {'first step':<14} {got['train_first'] / MIB:>9.0f}   (allocates Adam's moments)")
        print(f"{n:>10} {'total peak':<14} {got['train_steady_total'] / MIB:>9.0f}   (RSS of the process, "
              "imports and data included)")
    print("\ncomputed only (GiB): model table | training peak above it | one evaluation block")
    for n in (int(x) for x in args.project.split(",") if x):
        want = predict(n, args.dim, args.batch_size, args.eval_batch, args.world)
        print(f"{n:>10} items: {want['model'] / GIB:6.2f} | {want['train_steady'] / GIB:6.2f} | "
              f"{want['eval'] / GIB:5.2f}")


if __name__ == "__main__":
    main()
