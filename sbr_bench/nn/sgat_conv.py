"""`SGATConv`: LESSR's shortcut graph attention (Chen & Wong, KDD 2020, Eq. 6-8) as a PyG `MessagePassing`
layer over the shortcut graph (`batch.shortcut_edge_index`: every earlier item -> every later one, and
self-loops).

    x̂ = dropout(BatchNorm(x));  e_uv = w_eᵀ σ(W_q x̂_u + b_q + W_k x̂_v)  for an edge u -> v
    α_uv = softmax over v's incoming edges;  x'(v) = PReLU(Σ_u α_uv W_v x̂_u)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax


class SGATConv(MessagePassing):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, feat_drop: float = 0.0):
        super().__init__(aggr="sum")
        self.batch_norm = nn.BatchNorm1d(in_dim)
        self.feat_drop = nn.Dropout(feat_drop)
        self.fc_q = nn.Linear(in_dim, hidden_dim, bias=True)
        self.fc_k = nn.Linear(in_dim, hidden_dim, bias=False)
        self.fc_v = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_e = nn.Linear(hidden_dim, 1, bias=False)
        self.activation = nn.PReLU(out_dim)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.feat_drop(self.batch_norm(x))
        n = x.size(0)
        out = self.propagate(edge_index, q=self.fc_q(x), k=self.fc_k(x), v=self.fc_v(x), size=(n, n))
        return self.activation(out)

    def message(self, q_j: Tensor, k_i: Tensor, v_j: Tensor, index: Tensor, ptr: Tensor | None,
                size_i: int | None) -> Tensor:
        return v_j * self.alpha(q_j, k_i, index, ptr, size_i).unsqueeze(-1)

    def alpha(self, q_j: Tensor, k_i: Tensor, index: Tensor, ptr: Tensor | None, size_i: int | None) -> Tensor:
        """α of every edge, softmax-normalised over each destination's incoming edges."""
        return softmax(self.fc_e(torch.sigmoid(q_j + k_i)).squeeze(-1), index, ptr, size_i)

    def attention(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """The edge weights α [E] for node features `x` that are already batch-normalised."""
        src, dst = edge_index
        return self.alpha(self.fc_q(x)[src], self.fc_k(x)[dst], dst, None, x.size(0))
