"""`GatedSessionConv`: SR-GNN's gated graph step (Wu et al., AAAI 2019, Eq. 1-5), shared by SR-GNN, GC-SAN
and SGNN-HN, as a PyG `MessagePassing` layer.

Per node v, with messages along the session graph's edges in both directions:

    a_in(v)  = Σ_{u->v} w_uv (W_in h_u + b_in)  / Σ_{u->v} w_uv  + b_iah     (SR-GNN's row-normalised A_in)
    a_out(v) = Σ_{v->u} w_vu (W_out h_u + b_out) / Σ_{v->u} w_vu + b_oah    (A_out)
    h'(v)    = GRU(x = [a_in; a_out], h = h_v)                               (gates r, z, n; x2h, h2h)

w = 1 per distinct edge (SR-GNN's code), or the transition count with `edge_count_weights`; a node without
in-edges gets a_in = b_iah exactly, as in the reference code. `gate_flip_compat` mixes the GRU update the
other way round (h' = (1-z)·h + z·n, the RecBole/GC-SAN code's convention).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from ..models.base import gru_update


class GatedSessionConv(MessagePassing):
    def __init__(self, dim: int, gate_flip_compat: bool = False, edge_count_weights: bool = False):
        super().__init__(aggr="sum")
        self.edge_in = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)
        # SR-GNN adds these after aggregation, so isolated nodes still get a bias (RecBole drops them).
        self.b_iah = nn.Parameter(torch.zeros(dim))
        self.b_oah = nn.Parameter(torch.zeros(dim))
        self.x2h = nn.Linear(2 * dim, 3 * dim)
        self.h2h = nn.Linear(dim, 3 * dim)
        self.gate_flip_compat = gate_flip_compat
        self.edge_count_weights = edge_count_weights

    def forward(self, h: Tensor, edge_index: Tensor, edge_count: Tensor | None = None) -> Tensor:
        gx = self.x2h(self.neighbourhood(h, edge_index, edge_count))
        return gru_update(gx, self.h2h(h), h, flip=self.gate_flip_compat)

    def neighbourhood(self, h: Tensor, edge_index: Tensor, edge_count: Tensor | None) -> Tensor:
        """[a_in; a_out]: weighted means of transformed neighbour states along and against the edges."""
        n = h.size(0)
        w = edge_count.to(h.dtype) if self.edge_count_weights and edge_count is not None else \
            h.new_ones(edge_index.size(1))
        reverse = edge_index.flip(0)
        # Nodes are transformed before the messages are gathered (fewer nodes than edges).
        a_in = self.propagate(edge_index, x=self.edge_in(h), weight=w, size=(n, n))
        a_out = self.propagate(reverse, x=self.edge_out(h), weight=w, size=(n, n))
        deg_in = scatter(w, edge_index[1], dim=0, dim_size=n, reduce="sum").clamp(min=1.0)
        deg_out = scatter(w, edge_index[0], dim=0, dim_size=n, reduce="sum").clamp(min=1.0)
        return torch.cat([a_in / deg_in[:, None] + self.b_iah, a_out / deg_out[:, None] + self.b_oah], dim=-1)

    def message(self, x_j: Tensor, weight: Tensor) -> Tensor:
        return x_j * weight[:, None]

    @staticmethod
    def groups(prefix: str) -> dict[str, list[str]]:
        """The paper's Figure 2 weight groups of this layer, as module paths under `prefix`."""
        return {
            "gnn.propagation": [f"{prefix}edge_in", f"{prefix}edge_out"],
            "gnn.gate_ih": [f"{prefix}x2h"],
            "gnn.gate_hh": [f"{prefix}h2h"],
        }
