"""`EOPAConv`: LESSR's edge-order preserving aggregation (Chen & Wong, KDD 2020, Eq. 4-5) as a PyG
`MessagePassing` layer over the EOP multigraph (`batch.eop_edge_index`, one edge per transition).

    x̂ = BatchNorm(x);  m(v) = last state of a GRU run over the dropped-out x̂_u of v's incoming edges, in
    edge (time) order, from h_0 = 0 (0 for a node without in-edges);  x'(v) = PReLU(W_self x̂_v + W_neigh m(v))

The aggregation is the GRU (`OrderedGRUAggregation`): the messages of a node in edge order, its last state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from ..models.base import gru_update


class GRUGates(nn.Module):
    """One GRU step with the input and hidden projections as separate Linears (nn.GRU's gate order r, z, n)."""

    def __init__(self, dim: int):
        super().__init__()
        self.x2h = nn.Linear(dim, 3 * dim)
        self.h2h = nn.Linear(dim, 3 * dim)

    def step(self, gx: Tensor, h: Tensor) -> Tensor:
        """gx = x2h(x) precomputed for the step's inputs; h the previous states."""
        return gru_update(gx, self.h2h(h), h)


def last_gru_state(gru: GRUGates, messages: Tensor, index: Tensor, n: int) -> Tensor:
    """For every node 0..n-1, the final GRU state over the messages whose `index` is that node, in message
    order (zeros for nodes without messages). One batched GRU step per time slot over the nodes still
    receiving: nodes ranked by message count, so that the active ones at each step are a prefix."""
    dim = messages.shape[1]
    if index.numel() == 0:
        return messages.new_zeros(n, dim)
    dst_sorted, order = torch.sort(index, stable=True)  # stable: message order within a node
    deg = torch.bincount(index, minlength=n)
    first = torch.cumsum(deg, 0) - deg  # start of each node's run in the sorted messages
    slot = torch.arange(index.numel(), device=index.device) - first[dst_sorted]

    node_rank = torch.sort(deg, descending=True, stable=True).indices
    n_active = int((deg > 0).sum())
    node_rank = node_rank[:n_active]
    rank_deg = deg[node_rank]
    rank_of_node = torch.empty(n, dtype=torch.long, device=index.device)
    rank_of_node[node_rank] = torch.arange(n_active, device=index.device)
    steps = int(rank_deg[0])
    grid = torch.full((n_active, steps), -1, dtype=torch.long, device=index.device)
    grid[rank_of_node[dst_sorted], slot] = torch.arange(index.numel(), device=index.device)
    active = (rank_deg.unsqueeze(1) > torch.arange(steps, device=index.device)).sum(0).tolist()

    gx = gru.x2h(messages[order])  # input projections of all messages at once
    h = messages.new_zeros(n_active, dim)
    finished = []  # states of nodes whose messages ran out, in reverse rank order
    for t in range(steps):
        k = active[t]
        if k < h.shape[0]:
            finished.append(h[k:])
        h = gru.step(gx[grid[:k, t]], h[:k])
    finished.append(h)
    states = torch.cat(finished[::-1], dim=0)
    return messages.new_zeros(n, dim).index_copy(0, node_rank, states)


class EOPAConv(MessagePassing):
    def __init__(self, in_dim: int, out_dim: int, feat_drop: float = 0.0):
        super().__init__(aggr=None)  # the aggregation is the ordered GRU below
        self.batch_norm = nn.BatchNorm1d(in_dim)
        self.feat_drop = nn.Dropout(feat_drop)
        self.gru = GRUGates(in_dim)
        self.fc_self = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.activation = nn.PReLU(out_dim)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.batch_norm(x)
        # As the reference: dropout on the messages only; the self term sees the undropped features.
        neigh = self.propagate(edge_index, x=self.feat_drop(x), size=(x.size(0), x.size(0)))
        return self.activation(self.fc_self(x) + self.fc_neigh(neigh))

    def message(self, x_j: Tensor) -> Tensor:
        return x_j

    def aggregate(self, inputs: Tensor, index: Tensor, ptr: Tensor | None = None,
                  dim_size: int | None = None) -> Tensor:
        return last_gru_state(self.gru, inputs, index, dim_size)
