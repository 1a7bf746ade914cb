"""NextItNet's dilated causal convolution as one matrix product over shifted copies (`CausalConv`) against
torch's `Conv1d` with the same weights and left padding, forward + backward, side by side in one process.

Usage: python benchmarks/causal_conv.py [--batch 100] [--length 20] [--dim 64] [--rounds 20] [--threads 1]
Checks that both give the same output, then times them interleaved, round by round (10 residual blocks'
worth of convolutions each: dilations 1, 2, 4, 8 as in the default 5 x (1, 4) blocks), and prints the
median ms of each and the ratio Conv1d / CausalConv.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sbr_bench.models.nextitnet import CausalConv


def conv1d_twin(conv: CausalConv, dim: int, kernel: int, rate: int) -> torch.nn.Conv1d:
    twin = torch.nn.Conv1d(dim, dim, kernel, dilation=rate)
    with torch.no_grad():
        twin.weight.copy_(conv.linear.weight.view(dim, kernel, dim).permute(0, 2, 1))
        twin.bias.copy_(conv.linear.bias)
    return twin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rates = [1, 2, 4, 8] * 5  # conv1 and conv2 (2r) of the default 5 x (1, 4) blocks
    ours = [CausalConv(args.dim, 3, r) for r in rates]
    theirs = [conv1d_twin(c, args.dim, 3, r) for c, r in zip(ours, rates)]
    x = torch.randn(args.batch, args.length, args.dim, requires_grad=True)

    def run_ours():
        h = x
        for conv in ours:
            h = torch.relu(conv(h))
        return h

    def run_conv1d():
        h = x.transpose(1, 2)
        for conv, r in zip(theirs, rates):
            h = torch.relu(conv(F.pad(h, (2 * r, 0))))
        return h.transpose(1, 2)

    torch.testing.assert_close(run_ours(), run_conv1d(), atol=1e-4, rtol=1e-4)
    times = {"CausalConv": [], "Conv1d": []}
    for _ in range(args.rounds):
        for name, fn in (("CausalConv", run_ours), ("Conv1d", run_conv1d)):
            start = time.perf_counter()
            fn().sum().backward()
            times[name].append((time.perf_counter() - start) * 1000)
    ms = {name: statistics.median(t) for name, t in times.items()}
    print(f"batch {args.batch}, length {args.length}, d {args.dim}, {len(rates)} convolutions, "
          f"{args.threads} thread(s), median of {args.rounds} rounds (forward + backward):")
    for name, value in ms.items():
        print(f"  {name:10s} {value:8.2f} ms")
    print(f"  Conv1d / CausalConv: {ms['Conv1d'] / ms['CausalConv']:.2f}x")


if __name__ == "__main__":
    main()
