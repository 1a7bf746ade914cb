"""STAMP (Liu et al., KDD 2018): short-term attention/memory priority, on item embeddings only.

With x_i the embeddings of the prefix's clicks, x_t the last one and m_s their mean (paper Eq. 5-10):
    α_i = w_0ᵀ σ(W_1 x_i + W_2 x_t + W_3 m_s + b_a)        attention, not normalised
    m_a = Σ_i α_i x_i
    h_s = tanh(W_s m_a + b_s),   h_t = tanh(W_t x_t + b_t)  the two MLP cells
    score(v) = ⟨h_s, h_t, x_v⟩ = (h_s ⊙ h_t)ᵀ x_v          trilinear composition, softmax cross-entropy

The paper writes σ around the trilinear product before the softmax; the authors' code (uestcnlp/STAMP,
`model/STAMP_cikm.py`) feeds the product itself to the softmax, as we do. Their code differs from the
paper in two more places, each a flag: it adds the mean to the attention output (m_a + m_s,
`add_mean_compat`) and its Linears have no biases (`bias=False`). Defaults from their `stamp_cikm`
configuration: d = 100, batch 512, Adam lr 0.003, 10 epochs, no weight decay or learning-rate decay.
Their renormalisation of looked-up embeddings to norm 1.5 and gradient clipping at 110 are not
implemented.

Figure-2 weight groups (no GNN): readout.key = W_1 (every click), readout.query = W_2 and W_3 (last click,
mean), readout.other = w_0, readout.transform = W_s and W_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from . import space
from .base import DotScorer, EmbeddingEncoder, Encoded, Readout
from .config import TrainConfig
from .registry import ModelSpec


class STAMPReadout(Readout):
    def __init__(self, dim: int, bias: bool = True, add_mean_compat: bool = False):
        super().__init__()
        self.w1 = nn.Linear(dim, dim, bias=False)  # on every click x_i
        self.w2 = nn.Linear(dim, dim, bias=False)  # on the last click x_t
        self.w3 = nn.Linear(dim, dim, bias=bias)  # on the mean m_s; its bias is b_a
        self.w0 = nn.Linear(dim, 1, bias=False)
        self.mlp_s = nn.Linear(dim, dim, bias=bias)  # W_s, b_s
        self.mlp_t = nn.Linear(dim, dim, bias=bias)  # W_t, b_t
        self.add_mean_compat = add_mean_compat

    def forward(self, enc: Encoded, batch) -> Tensor:
        x_t = enc.last_h
        m_s = scatter(enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="mean")
        alpha = self.w0(torch.sigmoid(self.w1(enc.h) + (self.w2(x_t) + self.w3(m_s))[enc.pos_batch]))  # [P, 1]
        m_a = scatter(alpha * enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="sum")
        if self.add_mean_compat:
            m_a = m_a + m_s
        return torch.tanh(self.mlp_s(m_a)) * torch.tanh(self.mlp_t(x_t))

    def weight_groups(self):
        return {"readout.key": ["w1"], "readout.query": ["w2", "w3"], "readout.other": ["w0"],
                "readout.transform": ["mlp_s", "mlp_t"]}


@dataclass(frozen=True)
class STAMPConfig(TrainConfig):
    """STAMP (the authors' `stamp_cikm` configuration): d = 100, batch 512, Adam lr 0.003, 10 epochs."""

    batch_size: int = 512
    lr: float = 3e-3
    l2: float = 0.0
    lr_decay: float = 1.0
    epochs: int = 10
    bias: bool = True
    add_mean_compat: bool = False


SPECS = {
    "stamp": ModelSpec(
        encoder=lambda n_items, cfg: EmbeddingEncoder(cfg["dim"]),
        readout=lambda cfg: STAMPReadout(cfg["dim"], cfg["bias"], cfg["add_mean_compat"]),
        scorer=lambda cfg: DotScorer(),
        defaults=STAMPConfig(),
        readout_params=("bias", "add_mean_compat"),
        # Around the authors' values (their configurations use d 100-300 and lr 1e-3..3e-3).
        space={"dim": space.dims(100), "lr": space.LR, "l2": space.L2},
        doc="STAMP (KDD'18): attention over item embeddings with the last click as short-term memory, "
            "trilinear scores",
    ),
}
