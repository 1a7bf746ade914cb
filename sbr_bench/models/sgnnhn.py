"""SGNN-HN (Pan et al., CIKM 2020): star graph neural network with a highway network.

Encoder (`StarEncoder`), on each session graph plus one star node per session:
    s⁰ = mean of the session's node embeddings (scatter over `batch.batch`)
    per layer l = 1..step (one gated cell shared by all layers, as SR-GNN's steps):
        ĥ_i = GatedSessionConv(h_i)                                  (SR-GNN satellite update)
        α_i = σ((W_q1 ĥ_i)ᵀ (W_k1 s) / √d);  h_i = (1 - α_i) ĥ_i + α_i s
        β_i = softmax_i((W_k2 h_i)ᵀ (W_q2 s) / √d) over the session's nodes (PyG `softmax`);  s = Σ_i β_i h_i
    highway: g = σ(W_g [h⁰; h^L]),  h^f = g ⊙ h⁰ + (1 - g) ⊙ h^L
The star vector goes to `enc.extras["star"]`.

Readout (`SGNNHNReadout`): reversed position embeddings u_t = h^f_t + p_{n-t} (p_0 = last click),
    α_t = w_0ᵀ σ(W_1 z_r + W_2 u_t + W_3 s + b),  z_r = u_n (last click),  z_g = Σ_t α_t u_t,
    z_h = W [z_g; z_r]
(z_r includes the last click's position embedding, as `ht` in the SR-GNN-style SGNN-HN code, e.g. the
SGNN-HN copy in RickySkywalker/SR-PredictAO-official `SGNNHN+NDF/model.py`; with reversed positions this
is a constant offset.)
Scorer: τ · ⟨LN(z_h), LN(v_j)⟩ with LN(x) = (x - mean(x)) / ‖x - mean(x)‖ (the parameter-free
"layer normalisation" of RecBole-GNN's SGNN-HN, which keeps the product a cosine so that τ = 12 makes sense),
or `scorer="cosine"` for plain cosine × τ.

Config keys (cfg) and compatibility flags:
- `step` (2): layers. The paper tunes it; RecBole-GNN's yaml says 6 and its Diginetica leaderboard's best
  SGNN-HN run uses 2, which we take (the SR-PredictAO copy defaults to 1 with d = 256);
- `sigma` (12.0): τ; `scorer` ("layernorm" | "cosine");
- `max_positions` (200): size of the reversed position table; older positions share the last row;
- `star_gate_softmax_compat` (False): α_i = softmax over the session's nodes instead of a per-node sigmoid,
  as the StarGNN of Peiyance/Atten-Mixer-torch SGNN-HN-AM/model_star.py;
- `star_plain_dot_compat` (False): no W_q1/W_k1/W_q2/W_k2 — gate σ(ĥ_iᵀ s / √d) and star pooling
  softmax(h_iᵀ s) without 1/√d, as RecBole-GNN and the SR-GNN-style SGNN-HN code above;
- `forward_positions_compat` (False): forward-order positions (p_0 = first click), as those two codes;
- `highway` (True): False drops the highway network (RecBole-GNN has none);
- plus the SR-GNN cell keys `gate_flip_compat`, `edge_count_weights`, and `dropout` on the embeddings.
Defaults (paper, as recalled in ../shared/docs/reference-implementations.md §4): d = 256, batch 100, lr 1e-3 decayed
0.1 every 3 epochs, l2 1e-5; 30 epochs and patience 10 as the SR-GNN lineage.

Figure-2 weight groups: SR-GNN's gnn.* groups, plus gnn.other = W_q1, W_k1, W_q2, W_k2 (when they exist), W_g;
readout.query = W_1 (last click), readout.key = W_2, readout.other = W_3 (star), w_0;
readout.transform = W. The position table is an embedding (no group).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from ..errors import ConfigError, UserError
from .base import CosineScorer, Encoded, Encoder, Readout, Scorer
from .config import TrainConfig
from .registry import ModelSpec
from . import space
from .scoring import normalised_scores
from ..nn.gated_session_conv import GatedSessionConv


class StarEncoder(Encoder):
    def __init__(self, dim: int, step: int = 2, dropout: float = 0.0, highway: bool = True,
                 star_gate_softmax_compat: bool = False, star_plain_dot_compat: bool = False,
                 gate_flip_compat: bool = False, edge_count_weights: bool = False):
        super().__init__()
        self.step = int(step)
        self.scale = 1.0 / math.sqrt(dim)
        self.dropout = nn.Dropout(dropout)
        self.cell = GatedSessionConv(dim, gate_flip_compat, edge_count_weights)
        self.star_plain_dot_compat = star_plain_dot_compat
        if star_plain_dot_compat:
            self.gate_q = self.gate_k = self.star_q = self.star_k = None
        else:
            self.gate_q = nn.Linear(dim, dim, bias=False)  # W_q1 (satellites)
            self.gate_k = nn.Linear(dim, dim, bias=False)  # W_k1 (star)
            self.star_q = nn.Linear(dim, dim, bias=False)  # W_q2 (star)
            self.star_k = nn.Linear(dim, dim, bias=False)  # W_k2 (satellites)
        self.highway = nn.Linear(2 * dim, dim, bias=False) if highway else None  # W_g
        self.star_gate_softmax_compat = star_gate_softmax_compat

    @classmethod
    def from_cfg(cls, cfg: dict) -> "StarEncoder":
        return cls(cfg["dim"], cfg["step"], cfg["dropout"], cfg["highway"], cfg["star_gate_softmax_compat"],
                   cfg["star_plain_dot_compat"], cfg["gate_flip_compat"], cfg["edge_count_weights"])

    def _project(self, linear, x: Tensor) -> Tensor:
        return x if linear is None else linear(x)

    def forward(self, batch, embedding):
        node_batch = batch.batch
        B = int(batch.num_graphs)
        h0 = self.dropout(embedding(batch.x))
        star = scatter(h0, node_batch, dim=0, dim_size=B, reduce="mean")
        h = h0
        for _ in range(self.step):
            h_hat = self.cell(h, batch.edge_index, batch.edge_count)
            gate_logit = (self._project(self.gate_q, h_hat)
                          * self._project(self.gate_k, star)[node_batch]).sum(-1) * self.scale
            if self.star_gate_softmax_compat:
                alpha = softmax(gate_logit, node_batch, num_nodes=B)
            else:
                alpha = torch.sigmoid(gate_logit)
            h = (1 - alpha[:, None]) * h_hat + alpha[:, None] * star[node_batch]
            beta_logit = (self._project(self.star_k, h) * self._project(self.star_q, star)[node_batch]).sum(-1)
            if not self.star_plain_dot_compat:  # the reference code pools with an unscaled dot product
                beta_logit = beta_logit * self.scale
            beta = softmax(beta_logit, node_batch, num_nodes=B)
            star = scatter(beta[:, None] * h, node_batch, dim=0, dim_size=B, reduce="sum")
        if self.highway is not None:
            g = torch.sigmoid(self.highway(torch.cat([h0, h], dim=-1)))
            h = g * h0 + (1 - g) * h
        return Encoded(h[batch.alias], batch.alias_batch, batch.last, batch.length, node_h=h,
                       extras={"star": star})

    def weight_groups(self):
        groups = GatedSessionConv.groups("cell.")
        star = [] if self.star_plain_dot_compat else ["gate_q", "gate_k", "star_q", "star_k"]
        groups["gnn.other"] = star + (["highway"] if self.highway is not None else [])
        return groups


class SGNNHNReadout(Readout):
    needs_batch = True  # reads the star node too: not a PyG Aggregation (sbr_bench.nn)

    def __init__(self, dim: int, max_positions: int = 200, forward_positions_compat: bool = False):
        super().__init__()
        self.max_positions = int(max_positions)
        self.forward_positions_compat = forward_positions_compat
        # row 0 = last click (reversed positions), or the first click with forward_positions_compat
        self.position = nn.Embedding(self.max_positions, dim)
        self.linear_one = nn.Linear(dim, dim, bias=False)  # W_1, last click (query)
        self.linear_two = nn.Linear(dim, dim, bias=True)  # W_2, positions (key); its bias is b
        self.linear_three = nn.Linear(dim, dim, bias=False)  # W_3, star
        self.linear_four = nn.Linear(dim, 1, bias=False)  # w_0
        self.linear_transform = nn.Linear(2 * dim, dim)  # W

    def forward(self, enc: Encoded, batch) -> Tensor:
        if "star" not in enc.extras:
            raise UserError("the sgnnhn readout needs a star node from its encoder; compose it with the "
                            "sgnnhn encoder (the model sgnnhn), not with another encoder")
        star = enc.extras["star"]
        pos_batch = enc.pos_batch
        start = enc.last - enc.length + 1  # first position of each session
        offset = torch.arange(enc.h.size(0), device=enc.h.device) - start[pos_batch]
        position = offset if self.forward_positions_compat else enc.length[pos_batch] - 1 - offset
        u = enc.h + self.position(position.clamp(max=self.max_positions - 1))
        z_r = u[enc.last]  # the last click, with its position embedding (as the reference code's ht)
        pre = self.linear_one(z_r)[pos_batch] + self.linear_two(u) + self.linear_three(star)[pos_batch]
        alpha = self.linear_four(torch.sigmoid(pre))  # [P, 1], unnormalised as SR-GNN
        z_g = scatter(alpha * u, pos_batch, dim=0, dim_size=enc.num_sessions, reduce="sum")
        return self.linear_transform(torch.cat([z_g, z_r], dim=-1))

    def weight_groups(self):
        return {"readout.query": ["linear_one"], "readout.key": ["linear_two"],
                "readout.other": ["linear_three", "linear_four"], "readout.transform": ["linear_transform"]}


class LayerNormScorer(Scorer):
    """τ · ⟨LN(s), LN(v_j)⟩ with the parameter-free LN(x) = (x - mean x) / ‖x - mean x‖."""

    def __init__(self, sigma: float = 12.0):
        super().__init__()
        self.sigma = sigma

    @staticmethod
    def normalise(x: Tensor) -> Tensor:
        return F.normalize(x - x.mean(dim=-1, keepdim=True), dim=-1)

    def forward(self, s: Tensor, items: Tensor, out: Tensor | None = None) -> Tensor:
        # = σ·LN(s) @ LN(items)ᵀ without dividing the table by its norms (see scoring.py)
        return normalised_scores(self.normalise(s), items, self.sigma, centre=True, out=out,
                                 precision=self.precision)


def make_scorer(cfg: dict) -> nn.Module:
    if cfg["scorer"] == "layernorm":
        return LayerNormScorer(cfg["sigma"])
    if cfg["scorer"] == "cosine":
        return CosineScorer(cfg["sigma"])
    raise ConfigError("overrides.scorer", "sgnnhn's scorer must be 'layernorm' or 'cosine'", cfg["scorer"])


@dataclass(frozen=True)
class SGNNHNConfig(TrainConfig):
    """SGNN-HN (see the module docstring for the sources): d = 256, 2 layers, highway network, τ = 12."""

    dim: int = 256
    dropout: float = 0.0
    patience: int = 10
    step: int = 2
    highway: bool = True
    star_gate_softmax_compat: bool = False
    star_plain_dot_compat: bool = False
    forward_positions_compat: bool = False
    gate_flip_compat: bool = False
    edge_count_weights: bool = False
    max_positions: int = 200
    scorer: str = "layernorm"
    sigma: float = 12.0


SPECS = {
    "sgnnhn": ModelSpec(
        encoder=lambda n_items, cfg: StarEncoder.from_cfg(cfg),
        readout=lambda cfg: SGNNHNReadout(cfg["dim"], cfg["max_positions"], cfg["forward_positions_compat"]),
        scorer=make_scorer,
        defaults=SGNNHNConfig(),
        readout_params=("max_positions", "forward_positions_compat", "scorer", "sigma"),
        # SGNN-HN's study varies the number of GNN layers; τ around the paper's 12.
        space={"dim": space.dims(256), "lr": space.LR, "l2": space.L2, "step": space.Int(1, 4),
               "sigma": space.Float(4.0, 24.0)},
        doc="SGNN-HN: star graph + highway network, star-aware soft attention, layer-normalised scores × τ",
        composed_input=dict(input_norm="layernorm", input_dropout=0.0),  # SGNN-HN-AM's LayerNorm on embeddings
    ),
}
