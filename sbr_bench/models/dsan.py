"""DSAN (Yuan et al., AAAI 2021: Dual Sparse Attention Network): self-attention and a global attention, both
with α-entmax whose α is learned per session, over the session plus a learned target token.

With e_i the item embeddings of the prefix's clicks i = 1..n, p_i position embeddings (p_{n+1} for the
target token t, a learned item_dim vector that is never a candidate), x_i = [e_i; p_i] (D = item_dim +
pos_dim), X = [x_1..x_n; x_{n+1} = [t; p_{n+1}]]:
    α_s = σ(w_αᵀ x_{n+1} + b_α) + 1                                   sparsity of the self-attention
    A = α_s-entmax(relu(W_q X + b_q) Xᵀ / √D)   over the keys         self-attention (K = V = X)
    F = LN(W_2 relu(W_1 A X + b_1) + b_2 + A X),  m_s = F_{n+1},  x̂_i = F_i
    α_g = σ(w_αᵀ m_s + b_α) + 1                                       the same w_α, as the reference code
    β = α_g-entmax(w_0ᵀ relu(W_1' x̂_i + W_2' m_s + b))  over i = 1..n   global attention
    c_g = Σ_i β_i x_i                                                 over the INPUT embeddings, not x̂
    c = selu(W_f [c_g; m_s] + b_f),   score(v) = w · cos(c, e_v)         w = 20
α is floored at 1 + 1e-5 (the reference code replaces α = 1 by 1.00001: entmax needs α > 1). Dropout (0.5)
on the queries, the feed-forward output and c, in training only. α-entmax is `sbr_bench.nn.entmax`.

Source: the authors' code (SamHaoYuan/DSANForAAAI2021, `DualAdaptiveTrain.ipynb`, Diginetica): item and
position dimensions 100, dropout 0.5, w = 20, batch 512, Adam with AMSGrad, lr 1e-3, no weight decay and
no learning-rate decay, 50 epochs keeping the best (here the suite's 30 epochs with early stopping);
W_1', W_2', w_0 ~ N(0, 0.05), b = 0 and b_q = 0, LayerNorm 1 and 0, the suite's U(±1/√d) elsewhere
(see `init`).

Where ours differs from that code:
- its embeddings renormalise to norm 1.5 inside the forward pass (`max_norm=1.5`, which rewrites the
  weights); not implemented;
- its embeddings start ~ N(0, 1) (PyTorch's default), ours ~ U(±1/√d) like every model of the suite;
- it left-pads every session to the data's longest (69 clicks on Diginetica) and masks the padding; we
  pack sessions (PyG style), attend from real rows only and pad the keys per batch, masked the same way:
  the same results, and a session's scores do not depend on its batch;
- its target token is an extra item row (id 40841, cut from the candidates); ours is its own parameter;
- positions run 1..n, n+1 there (row 0 padding); ours are rows 0..n, positions past `max_positions`
  sharing the last row (NISER's convention).

Figure-2 weight groups (no graph; the self-attention takes the GNN's slot, as NextItNet's convolutions):
gnn.propagation = W_q, W_1, W_2; gnn.other = w_α; readout.key = W_1' (every click), readout.query = W_2'
(m_s; its bias is b), readout.other = w_0, readout.transform = W_f. The target token and the position
table are embeddings (no group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter, to_dense_batch

from ..errors import ConfigError, UserError
from ..nn.entmax import entmax
from . import space
from .base import CosineScorer, Encoded, Encoder, Readout
from .config import TrainConfig
from .registry import ModelSpec

ALPHA_FLOOR = 1 + 1e-5


def _check(cfg: dict) -> None:
    # .get: in a composition ENCODER+dsan the cfg has only the readout's keys of DSAN's
    if cfg.get("pos_dim", 0) < 0:
        raise ConfigError("overrides.pos_dim", "must be at least 0", cfg["pos_dim"])
    if cfg.get("max_positions", 1) < 1:
        raise ConfigError("overrides.max_positions", "must be at least 1", cfg["max_positions"])
    if not 0.0 <= cfg.get("dropout", 0.0) < 1.0:
        raise ConfigError("overrides.dropout", "must be in [0, 1)", cfg["dropout"])


class DSANEncoder(Encoder):
    """Position embeddings, the target token and the α-entmax self-attention block. `h` holds the clicks'
    states x̂_i; extras: "target" m_s [B, D], "inputs" the clicks' input vectors x_i [P, D] and
    "alpha_global" α_g [B, 1] (computed here: w_α belongs to the encoder)."""

    def __init__(self, item_dim: int, pos_dim: int = 100, max_positions: int = 200, dropout: float = 0.5):
        super().__init__()
        dim = item_dim + pos_dim
        self.out_dim = dim  # wider than `dim`: composes only with a readout that expects D
        self.positions = nn.Embedding(max_positions, pos_dim)
        self.target = nn.Parameter(torch.zeros(item_dim))  # the model init draws it like the embeddings
        self.query = nn.Linear(dim, dim)  # W_q (the code's attention_mlp)
        self.ffn1 = nn.Linear(dim, dim)  # W_1
        self.ffn2 = nn.Linear(dim, dim)  # W_2
        self.norm = nn.LayerNorm(dim)
        self.alpha_w = nn.Linear(dim, 1)  # w_α, shared by both attentions
        self.dropout = nn.Dropout(dropout)

    def weight_groups(self):
        return {"gnn.propagation": ["query", "ffn1", "ffn2"], "gnn.other": ["alpha_w"]}

    def alpha(self, x: Tensor) -> Tensor:
        return (torch.sigmoid(self.alpha_w(x)) + 1).clamp(min=ALPHA_FLOOR)

    def forward(self, batch, embedding) -> Encoded:
        pos_batch, last, length = batch.alias_batch, batch.last, batch.length
        n_sessions, n_clicks, top = last.numel(), pos_batch.numel(), self.positions.num_embeddings - 1
        offset = torch.arange(n_clicks, device=last.device) - (last - length + 1)[pos_batch]
        x = torch.cat([embedding(batch.x)[batch.alias], self.positions(offset.clamp(max=top))], dim=-1)  # [P, D]
        target = torch.cat([self.target.expand(n_sessions, -1), self.positions(length.clamp(max=top))], dim=-1)
        # Rows: every click (packed) and then every session's target token. Attention is blind to order (the
        # positions are in the vectors), so in the dense [B, L+1] key layout the target token sits in the
        # last column, after the padding, rather than right after the session's last click.
        rows = torch.cat([x, target])  # [P + B, D]
        width = int(length.max()) + 1 if n_sessions else 1
        at = (torch.cat([pos_batch, torch.arange(n_sessions, device=last.device)]),
              torch.cat([offset, offset.new_full((n_sessions,), width - 1)]))
        seq = rows.new_zeros(n_sessions, width, rows.size(1)).index_put(at, rows)  # [B, L+1, D] keys = values
        column = torch.arange(width, device=rows.device)
        keys = (column < length.unsqueeze(1)) | (column == width - 1)  # [B, L+1]: clicks and target token
        # Queries only for real rows (not the padding): entmax's bisection is most of the cost.
        q = self.dropout(torch.relu(self.query(rows)))
        scores = (torch.zeros_like(seq).index_put(at, q) @ seq.transpose(1, 2))[at] / math.sqrt(rows.size(1))
        alpha_s = self.alpha(target)[at[0]]  # [P + B, 1], each row its session's α
        attn = entmax(scores.masked_fill(~keys[at[0]], float("-inf")), alpha_s)  # [P + B, L+1]
        f = (scores.new_zeros(n_sessions, width, width).index_put(at, attn) @ seq)[at]  # [P + B, D]
        f = self.norm(self.dropout(self.ffn2(torch.relu(self.ffn1(f)))) + f)
        m_s = f[n_clicks:]
        return Encoded(f[:n_clicks], pos_batch, last, length,
                       extras={"target": m_s, "inputs": x, "alpha_global": self.alpha(m_s)})


class DSANReadout(Readout):
    """Global attention with α_g-entmax over the clicks, then the decoder c = dropout(selu(W_f [c_g; m_s]))."""

    def __init__(self, item_dim: int, pos_dim: int = 100, dropout: float = 0.5):
        super().__init__()
        dim = item_dim + pos_dim
        self.in_dim = dim
        self.key = nn.Linear(dim, dim, bias=False)  # W_1' (atten_w1), on every click's state
        self.query = nn.Linear(dim, dim)  # W_2' (atten_w2), on m_s; its bias is b (atten_bias)
        self.w0 = nn.Linear(dim, 1, bias=False)  # w_0 (atten_w0)
        self.transform = nn.Linear(2 * dim, item_dim)  # W_f
        self.dropout = nn.Dropout(dropout)

    def weight_groups(self):
        return {"readout.key": ["key"], "readout.query": ["query"], "readout.other": ["w0"],
                "readout.transform": ["transform"]}

    def forward(self, enc: Encoded, batch) -> Tensor:
        if "target" not in enc.extras:
            raise UserError("the dsan readout needs the target token and α from its encoder; compose it with "
                            "the dsan encoder (the model dsan), not with another encoder")
        m_s, inputs, alpha_g = enc.extras["target"], enc.extras["inputs"], enc.extras["alpha_global"]
        n_sessions = enc.num_sessions
        logits = self.w0(torch.relu(self.key(enc.h) + self.query(m_s)[enc.pos_batch])).squeeze(-1)  # [P]
        dense, mask = to_dense_batch(logits, enc.pos_batch, fill_value=float("-inf"), batch_size=n_sessions)
        beta = entmax(dense, alpha_g)[mask]  # [P], in packed order
        c_g = scatter(beta.unsqueeze(-1) * inputs, enc.pos_batch, dim=0, dim_size=n_sessions, reduce="sum")
        return self.dropout(F.selu(self.transform(torch.cat([c_g, m_s], dim=-1))))


def init(model, cfg: dict) -> None:
    """The suite's U(±1/√d), then the reference code's own: the global attention's W_1', W_2', w_0 ~
    N(0, 0.05), its bias b and the query MLP's bias b_q zero, the LayerNorm's scale 1 and shift 0."""
    model.reset_parameters()
    encoder, readout = getattr(model.encoder, "encoder", model.encoder), model.readout
    if isinstance(readout, DSANReadout):
        for linear in (readout.key, readout.query, readout.w0):
            nn.init.normal_(linear.weight, 0.0, 0.05)
        nn.init.zeros_(readout.query.bias)
    if isinstance(encoder, DSANEncoder):
        nn.init.zeros_(encoder.query.bias)
        nn.init.ones_(encoder.norm.weight)  # PyTorch's LayerNorm start, as the reference code's
        nn.init.zeros_(encoder.norm.bias)


def build_encoder(n_items: int, cfg: dict) -> DSANEncoder:
    _check(cfg)
    return DSANEncoder(cfg["dim"], cfg["pos_dim"], cfg["max_positions"], float(cfg["dropout"]))


def build_readout(cfg: dict) -> DSANReadout:
    _check(cfg)
    return DSANReadout(cfg["dim"], cfg["pos_dim"], float(cfg["dropout"]))


@dataclass(frozen=True)
class DSANConfig(TrainConfig):
    """DSAN (the authors' Diginetica notebook): item and position dimensions 100, dropout 0.5, w = 20, batch
    512, Adam (AMSGrad) lr 1e-3, no weight decay, no learning-rate decay."""

    dim: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    l2: float = 0.0
    lr_decay: float = 1.0
    optimizer: str = "amsgrad"
    pos_dim: int = 100
    dropout: float = 0.5
    w: float = 20.0
    max_positions: int = 200


SPECS = {
    "dsan": ModelSpec(
        encoder=build_encoder,
        readout=build_readout,
        scorer=lambda cfg: CosineScorer(sigma=float(cfg["w"])),
        defaults=DSANConfig(),
        readout_params=("pos_dim", "dropout", "w"),
        init=init,
        space={"dim": space.dims(100), "lr": space.LR, "dropout": space.Float(0.0, 0.7),
               "w": space.Float(8.0, 30.0)},
        doc="DSAN (AAAI'21): self- and global attention with learned α-entmax sparsity, target token, "
            "cosine scores",
    ),
}
