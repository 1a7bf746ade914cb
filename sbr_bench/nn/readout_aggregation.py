"""`ReadoutAggregation`: any position-wise sbr-bench readout as a PyG graph-level aggregation.

A session readout maps the states of a session's clicks, in click order, to one vector. PyG's
`Aggregation` maps the rows of `x` grouped by a sorted `index` (or `ptr`) to one vector per group: the
same thing when each group's rows are in order. So

    aggr = ReadoutAggregation(AttenMixerReadout(64))
    graph_vectors = aggr(x, batch)          # x: [nodes, 64], batch: sorted graph index of each node

runs Atten-Mixer's multi-level readout (its "last item" being each graph's last row) wherever PyG takes an
aggregation, e.g. `torch_geometric.nn.models.GCN` followed by `aggr(x, batch)`. The outputs are exactly
those of `readout(Encoded(...))` on the same rows (`tests/test_nn.py`). Readouts that need more than the
position states (SGNN-HN's star node, LESSR's node graph) declare `needs_batch = True` and are refused.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn.aggr import Aggregation

from ..models.base import Encoded, Readout


class ReadoutAggregation(Aggregation):
    """Wrap `readout` (an sbr-bench `Readout`) as a PyG `Aggregation` over sorted groups of rows."""

    def __init__(self, readout: Readout):
        super().__init__()
        if getattr(readout, "needs_batch", False):
            raise ValueError(f"{type(readout).__name__} reads more than the position states (the session "
                             "graph); it cannot be used as an aggregation")
        self.readout = readout

    def forward(self, x: Tensor, index: Tensor | None = None, ptr: Tensor | None = None,
                dim_size: int | None = None, dim: int = -2, max_num_elements: int | None = None) -> Tensor:
        if dim not in (0, -2) or x.dim() != 2:
            raise ValueError("ReadoutAggregation aggregates the rows of a [N, d] tensor")
        if ptr is None:
            if index is None:
                index = x.new_zeros(x.size(0), dtype=torch.long)
            self.assert_sorted_index(index)
            size = int(index.max()) + 1 if dim_size is None and index.numel() else (dim_size or 0)
            length = torch.bincount(index, minlength=size)
        else:
            length = ptr[1:] - ptr[:-1]
        if bool((length == 0).any()):
            raise ValueError("every group needs at least one row (a session has at least one click)")
        group = torch.repeat_interleave(torch.arange(length.numel(), device=x.device), length)
        last = torch.cumsum(length, 0) - 1
        return self.readout(Encoded(x, group, last, length), None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.readout).__name__})"
