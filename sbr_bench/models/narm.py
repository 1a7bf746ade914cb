"""NARM (Li et al., CIKM 2017): GRU encoder, global + local (attentive) session encoding, bilinear decoder.

Encoder (`NARMEncoder`): a GRU over each prefix in click order, started from h_0 = 0, on dropped-out
item embeddings (dropout 0.25, as the authors' code). The GRU is written with separate `x2h`/`h2h`
Linears (PyTorch gate convention: r, z, n chunks; h' = (1 - z) ⊙ n + z ⊙ h) so SparseVD can wrap its
input and recurrent weight matrices; the input projection runs once over all packed positions, the
recurrence loops over time steps, updating at step t only the sessions longer than t. Positions come
back packed in `batch.alias` order.

Readout (`NARMReadout`), with h_t the last state (query) and h_j every state of the session:
    c_g = h_t                                                   (global encoder)
    e_j = vᵀ σ(A1 h_t + A2 h_j)                                 (paper Eq. 7)
    α_j = softmax_j(e_j) over the session's positions           (authors' Theano code; see below)
    c_l = Σ_j α_j h_j,   c = [c_g; c_l]                         (paper Eq. 8-9)
    s   = B · dropout_0.5(c),   score(i) = emb_iᵀ s              (bilinear decoder, paper Eq. 10)
The paper's Eq. 7-8 and RecBole's narm.py use e_j directly (no normalisation); the authors' code
(lijingsdu/sessionRec_NARM, NARM.py `compute_alpha`) applies a masked softmax over the positions.
`attn_softmax=True` (default) follows the authors' code, `False` the paper/RecBole. The authors' code also
uses hard sigmoids in the gates and attention; we use the logistic sigmoid (paper notation).
All readout Linears are bias-free, as in both references.

Dimensions: the paper uses 50-d embeddings and 100-d hidden states; the suite uses one `dim` for both
(default 100), so B maps 2·dim -> dim. Defaults follow the authors' code: Adam lr 1e-3, batch 512,
30 epochs, no weight decay and no learning-rate decay (lr_decay=1.0). Initialisation as the authors'
code: weights ~ N(0, 2/fan_in) (embedding: fan = number of items, as their `init_weights`), recurrent
weights orthogonal per gate, biases zero.

Figure-2 weight groups (NARM is no GNN, the GRU takes the GNN slots): gnn.gate_ih = x2h,
gnn.gate_hh = h2h; readout.query = A1, readout.key = A2, readout.other = v, readout.transform = B.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from .base import DotScorer, Encoded, Encoder, Readout, gru_over_prefixes
from .config import TrainConfig
from .registry import ModelSpec
from . import space


class NARMEncoder(Encoder):
    """Item embeddings -> GRU over each prefix in click order -> packed per-position states."""

    def __init__(self, dim: int, dropout: float = 0.25):
        super().__init__()
        self.dim = dim
        self.dropout = nn.Dropout(dropout)
        self.x2h = nn.Linear(dim, 3 * dim)
        self.h2h = nn.Linear(dim, 3 * dim, bias=False)  # one bias per gate, as the authors' GRU

    def forward(self, batch, embedding: nn.Embedding) -> Encoded:
        x = self.dropout(embedding(batch.x[batch.alias]))  # [P, d], click order
        packed = gru_over_prefixes(self.x2h(x), self.h2h, batch)  # input projections of all positions at once
        return Encoded(packed, batch.alias_batch, batch.last, batch.length)

    def weight_groups(self):
        return {"gnn.gate_ih": ["x2h"], "gnn.gate_hh": ["h2h"]}


class NARMReadout(Readout):
    """c = [h_t; Σ_j α_j h_j] with α_j = (softmax) vᵀσ(A1 h_t + A2 h_j), then s = B c."""

    def __init__(self, dim: int, dropout: float = 0.5, attn_softmax: bool = True):
        super().__init__()
        self.a1 = nn.Linear(dim, dim, bias=False)  # A1, on the last state (query)
        self.a2 = nn.Linear(dim, dim, bias=False)  # A2, on every state (key)
        self.v = nn.Linear(dim, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.b = nn.Linear(2 * dim, dim, bias=False)  # bilinear decoder B: emb_iᵀ B c
        self.attn_softmax = attn_softmax

    def forward(self, enc: Encoded, batch) -> Tensor:
        c_g = enc.last_h
        e = self.v(torch.sigmoid(self.a1(c_g)[enc.pos_batch] + self.a2(enc.h)))  # [P, 1]
        alpha = softmax(e, enc.pos_batch, num_nodes=enc.num_sessions) if self.attn_softmax else e
        c_l = scatter(alpha * enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="sum")
        return self.b(self.dropout(torch.cat([c_g, c_l], dim=-1)))

    def weight_groups(self):
        return {"readout.query": ["a1"], "readout.key": ["a2"], "readout.other": ["v"],
                "readout.transform": ["b"]}


def init_like_authors(model, cfg) -> None:
    """The authors' init for NARM's parts: N(0, 2/fan_in) weights (for the embedding fan_in = the number of
    items, as their `init_weights` of an (items x dim) table), orthogonal recurrent weights per gate, zero
    biases. Parts of other models (in compositions) keep the suite default (`reset_parameters`)."""
    model.reset_parameters()
    ours = [m for m in (model.encoder, model.readout) if isinstance(m, (NARMEncoder, NARMReadout))]
    with torch.no_grad():
        if isinstance(model.encoder, NARMEncoder):
            emb = model.embedding.weight
            emb.normal_(0.0, math.sqrt(2.0 / emb.size(0)))
        for part in ours:
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_features))
                    if module.bias is not None:
                        module.bias.zero_()
            if isinstance(part, NARMEncoder):
                for gate in part.h2h.weight.chunk(3, dim=0):
                    nn.init.orthogonal_(gate)


@dataclass(frozen=True)
class NARMConfig(TrainConfig):
    """NARM (the authors' code): d = 100, batch 512, dropout 0.25 on embeddings and 0.5 before decoding,
    Adam lr 1e-3 without weight decay or learning-rate decay."""

    batch_size: int = 512
    l2: float = 0.0
    lr_decay: float = 1.0
    dropout: float = 0.25
    ct_dropout: float = 0.5
    attn_softmax: bool = True


SPECS = {
    "narm": ModelSpec(
        encoder=lambda n_items, cfg: NARMEncoder(cfg["dim"], cfg["dropout"]),
        readout=lambda cfg: NARMReadout(cfg["dim"], cfg["ct_dropout"], cfg["attn_softmax"]),
        scorer=lambda cfg: DotScorer(),
        defaults=NARMConfig(),
        readout_params=("ct_dropout", "attn_softmax"),
        # The authors' code: dropout 0.25 and 0.5 around their values.
        space={"dim": space.dims(100), "lr": space.LR, "l2": space.L2, "dropout": space.Float(0.0, 0.5),
               "ct_dropout": space.Float(0.0, 0.7)},
        init=init_like_authors,
        doc="NARM: GRU encoder, last state + attention over states, bilinear decoder (dot scores)",
    ),
}
