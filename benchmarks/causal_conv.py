"""NextItNet's dilated causal convolution on packed sessions (`CausalConv`: one matrix product over shifted
copies gathered within each session) against torch's `Conv1d` with the same weights on the padded
[B, longest session, d] batch, forward + backward, side by side in one process on the same real batches.

Usage: python benchmarks/causal_conv.py [--dataset synthetic:diginetica] [--batch 100] [--batches 5]
                                        [--dim 64] [--rounds 5] [--threads 1]
Checks that both give the same states at every real position, then times them interleaved, round by
round (10 residual blocks' worth of convolutions: dilations 1, 2, 4, 8 as in the default 5 x (1, 4)
blocks), and prints the clicks per batch against the padded size, the median ms of each and the ratio
Conv1d / CausalConv.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch_geometric.utils import to_dense_batch

from sbr_bench.data.dataset import load_dataset
from sbr_bench.data.graphs import ExampleLoader
from sbr_bench.models.nextitnet import CausalConv, causal_taps


def conv1d_twin(conv: CausalConv, dim: int, kernel: int, rate: int) -> torch.nn.Conv1d:
    twin = torch.nn.Conv1d(dim, dim, kernel, dilation=rate)
    with torch.no_grad():
        twin.weight.copy_(conv.linear.weight.view(dim, kernel, dim).permute(0, 2, 1))
        twin.bias.copy_(conv.linear.bias)
    return twin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic:diginetica", help="e.g. ../shared/datasets/diginetica/srgnn_protocol")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = load_dataset(args.dataset)
    batches = [b for _, b in zip(range(args.batches), ExampleLoader(ds.train, args.batch, ds.n_items).batches(0))]
    rates = [1, 2, 4, 8] * 5  # conv1 and conv2 (2r) of the default 5 x (1, 4) blocks
    ours = [CausalConv(args.dim, 3, r) for r in rates]
    theirs = [conv1d_twin(c, args.dim, 3, r) for c, r in zip(ours, rates)]
    inputs = []
    for b in batches:
        x = torch.randn(b.alias.numel(), args.dim, requires_grad=True)
        offset = torch.arange(x.shape[0]) - (b.last - b.length + 1)[b.alias_batch]
        inputs.append((x, b.alias_batch, causal_taps(offset, {1, 2, 4, 8, 16})))

    def run_ours(x, _, taps):
        h = x
        for conv in ours:
            h = torch.relu(conv(h, taps))
        return h

    def run_conv1d(x, session, _):
        h, mask = to_dense_batch(x, session)
        h = h.transpose(1, 2)
        for conv, r in zip(theirs, rates):
            h = torch.relu(conv(F.pad(h, (2 * r, 0))))
        return h.transpose(1, 2)[mask]

    for item in inputs:
        torch.testing.assert_close(run_ours(*item), run_conv1d(*item), atol=1e-4, rtol=1e-4)
    times = {"CausalConv": [], "Conv1d": []}
    for _ in range(args.rounds):
        for name, fn in (("CausalConv", run_ours), ("Conv1d", run_conv1d)):
            start = time.process_time()
            for item in inputs:
                fn(*item).sum().backward()
            times[name].append((time.process_time() - start) * 1000 / len(inputs))
    ms = {name: statistics.median(t) for name, t in times.items()}
    clicks = sum(b.alias.numel() for b in batches) / len(batches)
    padded = sum(b.num_graphs * int(b.length.max()) for b in batches) / len(batches)
    print(f"{args.dataset}: {len(batches)} training batches of {args.batch}, {clicks:.0f} clicks per batch, "
          f"padded {padded:.0f}; d {args.dim}, {len(rates)} convolutions, {args.threads} thread(s), CPU ms per "
          f"batch, median of {args.rounds} rounds (forward + backward):")
    for name, value in ms.items():
        print(f"  {name:10s} {value:8.2f} ms")
    print(f"  Conv1d / CausalConv: {ms['Conv1d'] / ms['CausalConv']:.2f}x")


if __name__ == "__main__":
    main()
