"""The encoder layers as they were before `sbr_bench.nn` (plain modules with hand-written scatter), kept
verbatim so that tests/test_nn.py checks the MessagePassing layers against them with the same weights and
benchmarks/layer_step.py times both side by side."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from sbr_bench.models.base import gru_update


class GatedSessionCell(nn.Module):
    """One SR-GNN gated-GNN step over a (batched) session graph; reused by GC-SAN and SGNN-HN."""

    def __init__(self, dim: int, gate_flip_compat: bool = False, edge_count_weights: bool = False):
        super().__init__()
        self.edge_in = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)
        # SR-GNN adds these after aggregation, so isolated nodes still get a bias (RecBole drops them).
        self.b_iah = nn.Parameter(torch.zeros(dim))
        self.b_oah = nn.Parameter(torch.zeros(dim))
        self.x2h = nn.Linear(2 * dim, 3 * dim)
        self.h2h = nn.Linear(dim, 3 * dim)
        self.gate_flip_compat = gate_flip_compat
        self.edge_count_weights = edge_count_weights

    def aggregate(self, h: Tensor, edge_index: Tensor, edge_count: Tensor | None) -> Tensor:
        """[a_in; a_out]: weighted means of transformed neighbour states (SR-GNN's A_in, A_out)."""
        n = h.size(0)
        src, dst = edge_index
        if self.edge_count_weights and edge_count is not None:
            w = edge_count.to(h.dtype)
        else:
            w = h.new_ones(src.numel())
        # Transform nodes first (fewer nodes than edges), then gather along edges.
        msg_in = self.edge_in(h)[src] * w[:, None]
        msg_out = self.edge_out(h)[dst] * w[:, None]
        deg_in = scatter(w, dst, dim=0, dim_size=n, reduce="sum").clamp(min=1.0)
        deg_out = scatter(w, src, dim=0, dim_size=n, reduce="sum").clamp(min=1.0)
        a_in = scatter(msg_in, dst, dim=0, dim_size=n, reduce="sum") / deg_in[:, None] + self.b_iah
        a_out = scatter(msg_out, src, dim=0, dim_size=n, reduce="sum") / deg_out[:, None] + self.b_oah
        return torch.cat([a_in, a_out], dim=-1)

    def forward(self, h: Tensor, edge_index: Tensor, edge_count: Tensor | None = None) -> Tensor:
        gx = self.x2h(self.aggregate(h, edge_index, edge_count))
        return gru_update(gx, self.h2h(h), h, flip=self.gate_flip_compat)

    @staticmethod
    def groups(prefix: str) -> dict[str, list[str]]:
        return {
            "gnn.propagation": [f"{prefix}edge_in", f"{prefix}edge_out"],
            "gnn.gate_ih": [f"{prefix}x2h"],
            "gnn.gate_hh": [f"{prefix}h2h"],
        }


class GRUGates(nn.Module):
    """One GRU step with the input and hidden projections as separate Linears (nn.GRU's gate order r, z, n)."""

    def __init__(self, dim: int):
        super().__init__()
        self.x2h = nn.Linear(dim, 3 * dim)
        self.h2h = nn.Linear(dim, 3 * dim)

    def step(self, gx: Tensor, h: Tensor) -> Tensor:
        """gx = x2h(x) precomputed for the step's inputs; h the previous states."""
        return gru_update(gx, self.h2h(h), h)


def last_gru_state(gru: GRUGates, feat: Tensor, edge_index: Tensor) -> Tensor:
    """For every node, the final GRU state over its incoming messages feat[src] in edge-id order
    (zeros for nodes without in-edges). One step per time slot over the nodes still receiving."""
    n, dim = feat.shape
    src, dst = edge_index
    if src.numel() == 0:
        return feat.new_zeros(n, dim)
    dst_sorted, edge_order = torch.sort(dst, stable=True)  # stable: edge id (time) order within a node
    src_sorted = src[edge_order]
    deg = torch.bincount(dst, minlength=n)
    first_edge = torch.cumsum(deg, 0) - deg  # start of each node's run in the sorted edges
    slot = torch.arange(src.numel(), device=src.device) - first_edge[dst_sorted]

    # Rank receiving nodes by in-degree (descending): at step t the active nodes are a prefix.
    node_rank = torch.sort(deg, descending=True, stable=True).indices
    n_active = int((deg > 0).sum())
    node_rank = node_rank[:n_active]
    rank_deg = deg[node_rank]
    rank_of_node = torch.empty(n, dtype=torch.long, device=src.device)
    rank_of_node[node_rank] = torch.arange(n_active, device=src.device)
    steps = int(rank_deg[0])
    grid = torch.full((n_active, steps), -1, dtype=torch.long, device=src.device)
    grid[rank_of_node[dst_sorted], slot] = torch.arange(src.numel(), device=src.device)
    # active[t] = number of nodes with more than t messages
    active = (rank_deg.unsqueeze(1) > torch.arange(steps, device=src.device)).sum(0).tolist()

    gx = gru.x2h(feat[src_sorted])  # input projections of all messages at once
    h = feat.new_zeros(n_active, dim)
    finished = []  # states of nodes whose messages ran out, in reverse rank order
    for t in range(steps):
        k = active[t]
        if k < h.shape[0]:
            finished.append(h[k:])
        h = gru.step(gx[grid[:k, t]], h[:k])
    finished.append(h)
    states = torch.cat(finished[::-1], dim=0)
    return feat.new_zeros(n, dim).index_copy(0, node_rank, states)


class EOPA(nn.Module):
    """Edge-order preserving aggregation over the EOP multigraph."""

    def __init__(self, in_dim: int, out_dim: int, feat_drop: float):
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(in_dim)
        self.feat_drop = nn.Dropout(feat_drop)
        self.gru = GRUGates(in_dim)
        self.fc_self = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.activation = nn.PReLU(out_dim)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.batch_norm(x)
        # As the reference: dropout on the messages only; the self term sees the undropped features.
        neigh = last_gru_state(self.gru, self.feat_drop(x), edge_index)
        return self.activation(self.fc_self(x) + self.fc_neigh(neigh))


class SGAT(nn.Module):
    """Shortcut graph attention: every earlier item attends directly to later ones."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, feat_drop: float):
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(in_dim)
        self.feat_drop = nn.Dropout(feat_drop)
        self.fc_q = nn.Linear(in_dim, hidden_dim, bias=True)
        self.fc_k = nn.Linear(in_dim, hidden_dim, bias=False)
        self.fc_v = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_e = nn.Linear(hidden_dim, 1, bias=False)
        self.activation = nn.PReLU(out_dim)

    def attention(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Edge weights [E], softmax-normalised over each destination's incoming edges (x already normed)."""
        src, dst = edge_index
        e = self.fc_e(torch.sigmoid(self.fc_q(x)[src] + self.fc_k(x)[dst])).squeeze(-1)
        return softmax(e, dst, num_nodes=x.shape[0])

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.feat_drop(self.batch_norm(x))
        a = self.attention(x, edge_index)
        src, dst = edge_index
        out = scatter(self.fc_v(x)[src] * a.unsqueeze(-1), dst, dim=0, dim_size=x.shape[0], reduce="sum")
        return self.activation(out)
