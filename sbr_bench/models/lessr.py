"""LESSR (Chen & Wong, KDD 2020): EOPA and SGAT layers over each session's graphs, attention readout.

Encoder (`LESSREncoder`, needs the collate's extra graphs "eop" and "shortcut"):
- item vectors are looked up from the embedding table renormalised to `max_norm` (LESSR's
  `nn.Embedding(max_norm=1)`), see "max_norm" below;
- `num_layers` layers alternate EOPA (even index, over `batch.eop_edge_index`: every transition, time order,
  duplicates kept) and SGAT (odd index, over `batch.sc_edge_index`: shortcut edges i -> j for positions
  i <= j, self-loops included). Each layer's d-dim output is concatenated *in front of* its input
  (DenseNet style), so layer i reads width d*(i+1) and the encoder's node states have width d*(L+1);
- EOPA: BatchNorm -> for each node a GRU runs over its incoming messages (dropout of the source features)
  in edge (time) order; its last state is `neigh` (zeros for nodes without in-edges);
  out = PReLU(fc_self(x) + fc_neigh(neigh)), both bias-free, x the BatchNormed features without dropout
  (as the reference: its dropout only touches the messages). The GRU is written as two Linears
  (`x2h`, `h2h`, gate order r, z, n like `nn.GRU`) so SparseVD can measure gnn.gate_ih / gnn.gate_hh.
  Vectorised: edges are stably sorted by destination (edge id = time breaks ties), nodes ranked by
  in-degree, and one GRU step per time slot updates only the nodes that still have messages
  (the `pack_padded_sequence` idea without the padding);
- SGAT: BatchNorm -> dropout -> q = fc_q(x) (bias), k = fc_k(x), v = fc_v(x);
  e_uv = fc_e(sigmoid(q_u + k_v)) per shortcut edge u -> v, softmax over each destination's incoming
  edges (`torch_geometric.utils.softmax`), out_v = PReLU(sum_u a_uv v_u).

Readout (`LESSRReadout`), over NODES (unique items) like the reference, not positions:
- AttnReadout: BatchNorm -> dropout -> e_i = fc_e(sigmoid(fc_u x_i + fc_v x_last)), softmax within each
  session, s_g = PReLU(fc_out(sum_i a_i x_i));
- session vector sr = fc_sr(dropout(BatchNorm([x_last ; s_g]))), bias-free, where x_last is the
  (un-normalised) state of the session's last node. Scores: sr . e_j against the renormalised table.

max_norm: the reference's `nn.Embedding(max_norm=1)` rescales looked-up rows *in place* in the weight
(inside autograd-invisible no_grad), which also rescales the whole table when it computes the logits.
Here nothing is mutated: every forward rescales the table functionally, row_j * min(1, max_norm/|row_j|),
with the scale factor detached (as torch does, the norm is not differentiated). Used rows therefore
always have norm <= max_norm, exactly as in the reference. The spec's init projects the stored rows onto
the ball once (what the reference's first forward does), so stored and used rows agree from the start;
afterwards stored rows may drift past max_norm (the reference projects them again at every forward), a
small difference in optimisation only. `max_norm=0` disables it.

Defaults (cfg keys): the LESSR README suggests d=32 (Diginetica), 64 (Gowalla), 128 (Last.fm), all with
4 layers; we default to d=64 (also RecBole-GNN's setting) and num_layers=4, feat_drop=0.2, AdamW
(lr 1e-3, weight decay 1e-4 via `l2`), batch 512, patience 2, no LR decay. The reference exempts bias,
BatchNorm and PReLU parameters from weight decay; that is the trainer's business, not the model's.
The reference keeps PyTorch's default initialisation (embedding N(0,1) before renorm, BatchNorm 1/0,
PReLU 0.25), so this spec's `init` keeps it too (apart from the one-off projection above).

Figure-2 weight groups: gnn.propagation = EOPA fc_neigh + SGAT fc_q/fc_k/fc_v/fc_e; gnn.gate_ih /
gnn.gate_hh = EOPA x2h / h2h; gnn.other = EOPA fc_self; readout.query = fc_v (reads the last node),
readout.key = fc_u, readout.other = fc_e, readout.transform = fc_out + fc_sr.

Composition: the readout expects node states of width dim*(num_layers+1), so "X+lessr" only works with
an encoder of that width (a clear error says so otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from ..errors import UserError
from ..nn.eopa_conv import EOPAConv
from ..nn.sgat_conv import SGATConv
from .base import DotScorer, Encoded, Encoder, Readout
from .config import TrainConfig
from .registry import ModelSpec
from . import space


def renormalised_table(weight: Tensor, max_norm: float) -> Tensor:
    """Rows scaled to norm <= max_norm without touching the stored weight (scale not differentiated)."""
    if not max_norm:
        return weight
    norms = weight.detach().norm(dim=-1, keepdim=True)
    scale = (max_norm / (norms + 1e-7)).clamp(max=1.0)
    return weight * scale


class LESSREncoder(Encoder):
    extra_graphs = ("eop", "shortcut")

    def __init__(self, dim: int, num_layers: int = 4, feat_drop: float = 0.2, max_norm: float = 1.0):
        super().__init__()
        self.max_norm = max_norm
        self.layers = nn.ModuleList()
        width = dim
        for i in range(num_layers):
            layer = EOPAConv(width, dim, feat_drop) if i % 2 == 0 else SGATConv(width, dim, dim, feat_drop)
            self.layers.append(layer)
            width += dim
        self.out_dim = width

    def forward(self, batch, embedding: nn.Embedding) -> Encoded:
        for key in ("eop_edge_index", "sc_edge_index"):
            if key not in batch:
                raise ValueError(f"LESSR needs batch.{key}: collate with extra={self.extra_graphs}")
        table = renormalised_table(embedding.weight, self.max_norm)
        feat = table[batch.x]
        for i, layer in enumerate(self.layers):
            edges = batch.eop_edge_index if i % 2 == 0 else batch.sc_edge_index
            feat = torch.cat([layer(feat, edges), feat], dim=1)
        return Encoded(feat[batch.alias], batch.alias_batch, batch.last, batch.length,
                       node_h=feat, items=table[1:])

    def weight_groups(self) -> dict[str, list[str]]:
        groups = {"gnn.propagation": [], "gnn.gate_ih": [], "gnn.gate_hh": [], "gnn.other": []}
        for i, layer in enumerate(self.layers):
            p = f"layers.{i}"
            if isinstance(layer, EOPAConv):
                groups["gnn.propagation"].append(f"{p}.fc_neigh")
                groups["gnn.gate_ih"].append(f"{p}.gru.x2h")
                groups["gnn.gate_hh"].append(f"{p}.gru.h2h")
                groups["gnn.other"].append(f"{p}.fc_self")
            else:
                groups["gnn.propagation"] += [f"{p}.fc_q", f"{p}.fc_k", f"{p}.fc_v", f"{p}.fc_e"]
        return {k: v for k, v in groups.items() if v}


class LESSRReadout(Readout):
    """AttnReadout over each session's nodes + fc_sr over [last node ; attention summary]."""

    needs_batch = True  # reads more than the position states: not a PyG Aggregation (sbr_bench.nn)

    def __init__(self, dim: int, in_dim: int, feat_drop: float = 0.2):
        super().__init__()
        self.in_dim = in_dim
        self.batch_norm = nn.BatchNorm1d(in_dim)
        self.feat_drop = nn.Dropout(feat_drop)
        self.fc_u = nn.Linear(in_dim, dim, bias=False)
        self.fc_v = nn.Linear(in_dim, dim, bias=True)
        self.fc_e = nn.Linear(dim, 1, bias=False)
        self.fc_out = nn.Linear(in_dim, dim, bias=False)
        self.activation = nn.PReLU(dim)
        self.sr_batch_norm = nn.BatchNorm1d(in_dim + dim)
        self.sr_drop = nn.Dropout(feat_drop)
        self.fc_sr = nn.Linear(in_dim + dim, dim, bias=False)

    def forward(self, enc: Encoded, batch) -> Tensor:
        feat = enc.node_h
        if feat is None or feat.shape[1] != self.in_dim:
            got = "no node states" if feat is None else f"node states of width {feat.shape[1]}"
            raise UserError(f"the LESSR readout needs node states of width {self.in_dim} "
                            f"(dim * (num_layers + 1)); this encoder gives {got}")
        B = enc.num_sessions
        last_node = batch.alias[batch.last]
        x = self.feat_drop(self.batch_norm(feat))
        e = self.fc_e(torch.sigmoid(self.fc_u(x) + self.fc_v(x[last_node])[batch.batch]))
        alpha = softmax(e, batch.batch, num_nodes=B)
        s_g = self.activation(self.fc_out(scatter(alpha * x, batch.batch, dim=0, dim_size=B, reduce="sum")))
        sr = torch.cat([feat[last_node], s_g], dim=1)
        return self.fc_sr(self.sr_drop(self.sr_batch_norm(sr)))

    def weight_groups(self) -> dict[str, list[str]]:
        return {"readout.query": ["fc_v"], "readout.key": ["fc_u"], "readout.other": ["fc_e"],
                "readout.transform": ["fc_out", "fc_sr"]}


def _default_init_within_max_norm(model, cfg) -> None:
    """PyTorch's default initialisation (as LESSR; no SR-GNN-style uniform init), with the embedding rows
    projected once onto the max_norm ball, which is what the reference's first forward does to them.
    Without it the stored N(0,1) rows (norm ~ sqrt(d)) would shrink every update by that factor."""
    if cfg["max_norm"]:
        with torch.no_grad():
            weight = model.embedding.weight
            weight.copy_(renormalised_table(weight, cfg["max_norm"]))


@dataclass(frozen=True)
class LESSRConfig(TrainConfig):
    """LESSR (paper §5 and the official code): d = 64, 4 layers, dropout 0.2, AdamW lr 1e-3 with weight
    decay 1e-4, batch 512, patience 2, no learning-rate decay."""

    dim: int = 64
    num_layers: int = 4
    feat_drop: float = 0.2
    max_norm: float = 1.0
    optimizer: str = "adamw"
    l2: float = 1e-4
    batch_size: int = 512
    patience: int = 2
    lr_decay: float = 1.0


SPECS = {
    "lessr": ModelSpec(
        encoder=lambda n_items, cfg: LESSREncoder(cfg["dim"], cfg["num_layers"], cfg["feat_drop"], cfg["max_norm"]),
        readout=lambda cfg: LESSRReadout(cfg["dim"], cfg["dim"] * (cfg["num_layers"] + 1), cfg["feat_drop"]),
        scorer=lambda cfg: DotScorer(),
        defaults=LESSRConfig(),
        readout_params=("num_layers", "feat_drop"),
        # LESSR's study varies the number of layers; dropout and weight decay around the official code's.
        space={"dim": space.dims(64), "lr": space.LR, "l2": space.L2, "num_layers": space.Int(1, 5),
               "feat_drop": space.Float(0.0, 0.5)},
        init=_default_init_within_max_norm,
        doc="LESSR (KDD 2020): EOPA + SGAT layers (DenseNet concat), attention readout over nodes, "
            "dot scores against the max-norm-1 item table",
    ),
}
