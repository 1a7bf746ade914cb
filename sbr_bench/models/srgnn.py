"""SR-GNN (Wu et al., AAAI 2019): gated graph network over the session graph + soft-attention readout.

Encoder (`SRGNNEncoder`, one `GatedSessionConv` applied `step` times with shared weights), per node v:
    a_in(v)  = mean_{u -> v} (W_in h_u + b_in)  + b_iah        (SR-GNN's row-normalised A_in)
    a_out(v) = mean_{v -> w} (W_out h_w + b_out) + b_oah       (SR-GNN's row-normalised A_out)
    gi = x2h([a_in; a_out]),  gh = h2h(h)                      (3d each: chunks r, z, n)
    r = σ(gi_r + gh_r),  z = σ(gi_z + gh_z),  n = tanh(gi_n + r ⊙ gh_n)
    h' = (1 - z) ⊙ n + z ⊙ h                                   (PyTorch GRU convention, as SR-GNN's code)
The means run over de-duplicated neighbours (`batch.edge_index` is de-duplicated; SR-GNN's adjacency is
binary), so a node without in-edges gets a_in = b_iah exactly as in the reference code. Positions take
their node's state: h_t = node_h[batch.alias].

Readout (`SRGNNReadout`, paper Eq. 6-7): α_t = qᵀ σ(W1 h_n + W2 h_t + c) — unnormalised, no softmax,
as both the paper and the code; s_g = Σ_t α_t h_t; hybrid s_h = W3 [s_g; h_n] (`nonhybrid` uses s_g).
Scores are dot products with the item table (`DotScorer`).

Config keys (cfg) and compatibility flags:
- `step` (1): gated-GNN steps;
- `nonhybrid` (False): session vector = s_g only (SR-GNN's `--nonhybrid`);
- `gate_flip_compat` (False): h' = (1 - z) ⊙ h + z ⊙ n, the flipped convention of RecBole-GNN's
  SRGNNCell and johnny12150's GC-SAN (same family of functions, differently parameterised);
- `edge_count_weights` (False): weight neighbours by how often the transition occurs (`edge_count`)
  instead of SR-GNN's binary adjacency;
- `dropout` (0.0): dropout on the item embeddings entering the GNN (SR-GNN has none).
Defaults follow CRIPAC-DIG/SR-GNN pytorch_code/main.py: hidden 100, batch 100, Adam lr 1e-3, l2 1e-5,
StepLR(3, 0.1), step 1, 30 epochs, patience 10 (here with the registry's semantics: epochs without a
validation improvement; the reference counts bad epochs cumulatively and selects on test).

Figure-2 weight groups: gnn.propagation = edge_in, edge_out; gnn.gate_ih = x2h; gnn.gate_hh = h2h;
readout.query = W1 (last item), readout.key = W2, readout.other = q, readout.transform = W3.
The post-aggregation biases b_iah/b_oah are bias vectors (no weight matrix), so they are in no group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..nn.gated_session_conv import GatedSessionConv
from .base import DotScorer, Encoded, Encoder, Readout
from .config import TrainConfig
from .registry import ModelSpec
from . import space


class SRGNNEncoder(Encoder):
    """Item embeddings -> `step` gated-GNN steps (shared weights) -> per-position node states."""

    def __init__(self, dim: int, step: int = 1, dropout: float = 0.0, gate_flip_compat: bool = False,
                 edge_count_weights: bool = False):
        super().__init__()
        self.step = int(step)
        self.dropout = nn.Dropout(dropout)
        self.cell = GatedSessionConv(dim, gate_flip_compat, edge_count_weights)

    @classmethod
    def from_cfg(cls, cfg: dict) -> "SRGNNEncoder":
        return cls(cfg["dim"], cfg["step"], cfg["dropout"], cfg["gate_flip_compat"], cfg["edge_count_weights"])

    def propagate(self, batch, embedding: nn.Embedding) -> tuple[Tensor, Tensor]:
        """(initial node states, node states after `step` steps)."""
        h0 = self.dropout(embedding(batch.x))
        h = h0
        for _ in range(self.step):
            h = self.cell(h, batch.edge_index, batch.edge_count)
        return h0, h

    def forward(self, batch, embedding):
        _, node_h = self.propagate(batch, embedding)
        return Encoded(node_h[batch.alias], batch.alias_batch, batch.last, batch.length, node_h=node_h)

    def weight_groups(self):
        return GatedSessionConv.groups("cell.")


class SRGNNReadout(Readout):
    """Unnormalised soft attention with the last item as query, then the hybrid transform."""

    def __init__(self, dim: int, nonhybrid: bool = False):
        super().__init__()
        self.linear_one = nn.Linear(dim, dim)  # W1, applied to the last item (query)
        self.linear_two = nn.Linear(dim, dim)  # W2, applied to every position (key)
        self.linear_three = nn.Linear(dim, 1, bias=False)  # q
        self.nonhybrid = nonhybrid
        # Only built when used, so that every parameter of the model receives a gradient.
        self.linear_transform = None if nonhybrid else nn.Linear(2 * dim, dim)  # W3

    def forward(self, enc: Encoded, batch) -> Tensor:
        last_h = enc.last_h
        pre = self.linear_one(last_h)[enc.pos_batch] + self.linear_two(enc.h)
        alpha = self.linear_three(torch.sigmoid(pre))  # [P, 1], no softmax (paper Eq. 6, reference code)
        s_g = scatter(alpha * enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="sum")
        if self.nonhybrid:
            return s_g
        return self.linear_transform(torch.cat([s_g, last_h], dim=-1))

    def weight_groups(self):
        groups = {"readout.query": ["linear_one"], "readout.key": ["linear_two"],
                  "readout.other": ["linear_three"]}
        if not self.nonhybrid:
            groups["readout.transform"] = ["linear_transform"]
        return groups


@dataclass(frozen=True)
class SRGNNConfig(TrainConfig):
    """SR-GNN (paper §4 and the official code): d = 100, batch 100, Adam lr 1e-3 decayed 0.1 every 3 epochs,
    l2 1e-5, one propagation step; patience 10 as the official code."""

    patience: int = 10
    dropout: float = 0.0
    step: int = 1
    nonhybrid: bool = False
    gate_flip_compat: bool = False
    edge_count_weights: bool = False


SPECS = {
    "srgnn": ModelSpec(
        encoder=lambda n_items, cfg: SRGNNEncoder.from_cfg(cfg),
        readout=lambda cfg: SRGNNReadout(cfg["dim"], cfg["nonhybrid"]),
        scorer=lambda cfg: DotScorer(),
        defaults=SRGNNConfig(),
        readout_params=("nonhybrid",),
        # Around the paper's d, lr and l2; propagation steps 1-3 (the official code's `--step`).
        space={"dim": space.dims(100), "lr": space.LR, "l2": space.L2, "step": space.Int(1, 3)},
        doc="SR-GNN: gated GNN over the session graph, unnormalised soft-attention readout, dot scores",
    ),
}
