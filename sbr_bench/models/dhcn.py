"""DHCN (Xia et al., AAAI 2021): hypergraph convolution over a global item hypergraph + self-supervision.

Encoder (`DHCNEncoder`):
- `prepare(train)` builds the item hypergraph from the TRAINING split only: each hyperedge is the set of
  unique items of one training session (cfg `hyperedges="sessions"`, the paper: "each session is a
  hyperedge") or of one augmented training prefix (`hyperedges="prefixes"`, what the reference feeds it:
  `data[0]` of the augmented train pickle, so a session of n clicks gives n-1 nested hyperedges, and its
  last click only counts if it occurred earlier; a training split read from (prefix, target) pairs
  stores each pair as its own session, so there "sessions" means prefix + target). All hyperedges have
  weight 1. The operator
  A = D^-1 H B^-1 H^T (item degrees D, hyperedge sizes B; items never seen in training get a zero row)
  is kept as CSR buffers of A and A^T (not saved in checkpoints: call `prepare` again after loading;
  `operator()` gives A itself), with rows and columns in a reverse Cuthill-McKee order
  (neighbouring rows read nearby rows of x, which the cache rewards), each product as a weighted
  `F.embedding_bag` (one bag of x rows per row of A: FBGEMM's kernel on CPU, several times faster than
  torch.sparse.mm; the same call runs on CUDA). All L layers are one autograd Function: the map is linear,
  so it saves nothing, and its backward is the Horner form c (g + A^T(g + A^T(... g))) of L products.
  `hyper_min_weight` drops entries below it (the reference uses 0.05 on Nowplaying only; default 0).
- hypergraph channel, weight-free: X^(l+1) = A X^(l) for `layers` layers from X^(0) = the item embeddings;
  X_h = mean of X^(0..L) (`layer_pool="mean"`, the paper's 1/(L+1) sum; the reference sums them:
  `layer_pool="sum"`). Positions take X_h rows via the alias; scores use X_h (`Encoded.items`), not the
  raw table.
- line-graph channel, training only: each session of the batch is a node, edges weighted by the Jaccard
  overlap of the sessions' item sets, Θ^(l+1) = D^-1 (A_J + I) Θ^(l) from Θ^(0) = the mean raw embedding
  of the session's clicks, `layers` layers pooled like X_h. Its output goes to `Encoded.extras["line"]`;
  it never enters the scores (and is not computed at all in eval mode).

Readout (`DHCNReadout`, the paper's soft attention with reversed position embeddings):
- p_i: position embedding counted from the end (index 0 = last click), table of `max_len` rows;
- z_i = tanh(W1 [p_i ; x_i] + b); g_i = sigmoid(W_g1 z_i + c + W_g2 s*), s* = mean of the session's x_i;
- β_i = w2^T g_i, no softmax (as the paper and the reference); θ = sum_i β_i x_i.
  (The reference's W1 has no bias; the paper's has b: we follow the paper.)
- SSL (training only, when the encoder supplied the line-graph embeddings): the paper's DGI-style binary
  contrast with one corrupted negative, loss = -log σ(θ_h·θ_l) - log(1 - σ(θ_l·θ̃_h)) where θ̃_h is θ_h with
  rows and columns shuffled, times `beta_ssl`. The paper writes it per session; we average over the batch
  (`ssl_reduction="mean"`); the reference sums over the batch (`ssl_reduction="sum"`, which makes
  beta_ssl effectively batch_size times larger). The readout stores it in `enc.aux_loss`, which
  `SBRModel.loss` adds to the cross-entropy. So the SSL term exists only when the DHCN encoder (which
  supplies the line graph) and the DHCN readout (which makes θ_h) are used together.

In eval mode under `torch.no_grad()`, X_h is computed once and reused until the embedding changes
(keyed on the weight's version counter), so evaluating many batches costs one convolution.

Defaults: dim 100, batch 100, Adam lr 1e-3 without weight decay (the reference ignores its l2 flag) and
without LR decay, 3 layers, beta_ssl 0.01 (Diginetica; 0.02 for Tmall), 30 epochs, init U(±1/√d).

Figure-2 weight groups: the GNN has no weights at all. Readout: readout.query = glu2 (W_g2, reads the
session summary s*, the analogue of SR-GNN's last-item query), readout.key = W1 and glu1 (W_g1) (the
position-aware per-click path), readout.other = w2 (the scoring vector, like SR-GNN's linear_three).
There is no transformation layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..data.sessions import slice_gather
from ..errors import ConfigError
from .base import DotScorer, Encoded, Encoder, Readout
from .config import TrainConfig
from .registry import ModelSpec
from . import space

LAYER_POOLS = ("mean", "sum")
HYPEREDGES = ("sessions", "prefixes")
SSL_REDUCTIONS = ("mean", "sum")


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"overrides.{key}", f"DHCN accepts {key} in {', '.join(choices)}", value)


def hyperedge_items(train, hyperedges: str = "sessions") -> tuple[np.ndarray, np.ndarray]:
    """(hyperedge id, item id) of every click in every hyperedge of the training split (duplicates kept)."""
    sessions = train.sessions
    if hyperedges == "sessions":
        lengths = sessions.lengths
        return np.repeat(np.arange(len(sessions), dtype=np.int64), lengths), sessions.items
    lengths = train.ex_len.astype(np.int64)
    gather, _ = slice_gather(sessions.offsets[train.ex_seq], lengths)
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths), sessions.items[gather]


def hypergraph_factors(edge_ids: np.ndarray, items: np.ndarray, n_items: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(D^-1 H B^-1 [N, E], H^T [E, N]): the two factors of A, items 1..n_items, unit hyperedge weights."""
    if items.size and (items.min() < 1 or items.max() > n_items):
        raise ValueError(f"training items must lie in 1..{n_items}, got {items.min()}..{items.max()}")
    n_edges = int(edge_ids.max()) + 1 if edge_ids.size else 0
    h_t = sp.csr_matrix((np.ones(len(items)), (edge_ids, items - 1)), shape=(n_edges, n_items))
    h_t.sum_duplicates()
    h_t.data[:] = 1.0  # incidence: an item is in a hyperedge or not
    edge_size = np.asarray(h_t.sum(axis=1)).ravel()
    item_degree = np.asarray(h_t.sum(axis=0)).ravel()
    inv_b = np.divide(1.0, edge_size, out=np.zeros_like(edge_size), where=edge_size > 0)
    inv_d = np.divide(1.0, item_degree, out=np.zeros_like(item_degree), where=item_degree > 0)
    return (sp.diags(inv_d) @ h_t.T @ sp.diags(inv_b)).tocsr(), h_t


def hypergraph_operator(edge_ids: np.ndarray, items: np.ndarray, n_items: int, min_weight: float = 0.0,
                        factors=None) -> sp.coo_matrix:
    """A = D^-1 H B^-1 H^T over items 1..n_items (row/col j = item j+1), hyperedges of unit weight;
    `factors`: the `hypergraph_factors` of the same hyperedges, when already computed."""
    left, h_t = factors if factors is not None else hypergraph_factors(edge_ids, items, n_items)
    a = (left @ h_t).tocoo()
    if min_weight > 0:
        keep = a.data >= min_weight
        a = sp.coo_matrix((a.data[keep], (a.row[keep], a.col[keep])), shape=a.shape)
    return a


OPERATORS = ("op", "op_t")  # A and A^T, rows and columns in the encoder's `order`
CSR_PARTS = ("crow", "col", "val")


def _csr_parts(m: sp.spmatrix) -> tuple[Tensor, Tensor, Tensor]:
    m = m.tocsr()
    m.sort_indices()
    return (torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)))


def locality_order(a: sp.spmatrix) -> np.ndarray:
    """A row/column order that keeps A's entries near its diagonal (reverse Cuthill-McKee), so that the
    rows of x read by neighbouring rows of A x are close in memory (about 25% faster on Diginetica)."""
    pattern = (abs(a) + abs(a.T)).tocsr()
    return reverse_cuthill_mckee(pattern, symmetric_mode=True).astype(np.int64)


def _spmm(csr: tuple[Tensor, Tensor, Tensor], x: Tensor) -> Tensor:
    """CSR matrix @ dense x as a weighted embedding bag: one bag of x rows per matrix row. On CPU this
    is FBGEMM's vectorised kernel, several times faster than torch.sparse.mm's CSR product."""
    crow, col, val = csr
    return F.embedding_bag(col, x, crow, mode="sum", per_sample_weights=val.to(x.dtype), include_last_offset=True)


class _Convolve(torch.autograd.Function):
    """X_h = c * sum_{k=0..L} A^k x for the item rows of `weight` (row 0, padding, is not an item). One
    Function for all layers: the map is linear, so nothing is saved for the backward, which applies
    c * sum_k (A^T)^k g in Horner form, g + A^T(g + A^T(...)), as L products with A^T."""

    @staticmethod
    def forward(ctx, weight: Tensor, op: tuple, op_t: tuple, order: Tensor, rank: Tensor, layers: int,
                scale: float) -> Tensor:
        ctx.op_t, ctx.order, ctx.rank, ctx.layers, ctx.scale = op_t, order, rank, layers, scale
        x = weight.index_select(0, order + 1)  # item rows in operator order
        total = x * scale
        for _ in range(layers):
            x = _spmm(op, x)
            total.add_(x, alpha=scale)
        return total.index_select(0, rank)

    @staticmethod
    def backward(ctx, grad: Tensor):
        g = grad.index_select(0, ctx.order).mul_(ctx.scale)
        r = g
        for _ in range(ctx.layers):
            r = _spmm(ctx.op_t, r).add_(g)
        # the weight's gradient straight from the reordered rows: row 0 (padding) gets none
        out = grad.new_empty(len(ctx.rank) + 1, grad.shape[1])
        out[0] = 0
        torch.index_select(r, 0, ctx.rank, out=out[1:])
        return out, None, None, None, None, None, None


class _Propagate(torch.autograd.Function):
    """y = A x in item order (one layer; `DHCNEncoder.propagate`), backward A^T g."""

    @staticmethod
    def forward(ctx, x: Tensor, op: tuple, op_t: tuple, order: Tensor, rank: Tensor) -> Tensor:
        ctx.op_t, ctx.order, ctx.rank = op_t, order, rank
        return _spmm(op, x.index_select(0, order)).index_select(0, rank)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _spmm(ctx.op_t, grad.index_select(0, ctx.order)).index_select(0, ctx.rank), None, None, None, None


def _pool_layers(layers: list[Tensor], how: str) -> Tensor:
    total = torch.stack(layers).sum(0)
    return total / len(layers) if how == "mean" else total


class DHCNEncoder(Encoder):
    def __init__(self, n_items: int, layers: int = 3, layer_pool: str = "mean", hyperedges: str = "sessions",
                 min_weight: float = 0.0):
        super().__init__()
        _check_choice("layer_pool", layer_pool, LAYER_POOLS)
        _check_choice("hyperedges", hyperedges, HYPEREDGES)
        self.n_items, self.layers = n_items, int(layers)
        self.layer_pool, self.hyperedges, self.min_weight = layer_pool, hyperedges, min_weight
        # A and A^T as CSR (row pointers, columns, values), rows and columns reordered by `locality_order`:
        # item j sits at position rank[j], position k holds item order[k]. Kept as plain tensors so that the
        # module copies, pickles and moves as usual.
        for name in OPERATORS:
            for part in CSR_PARTS:
                self.register_buffer(f"{name}_{part}", None, persistent=False)
        self.register_buffer("order", None, persistent=False)
        self.register_buffer("rank", None, persistent=False)
        self._cache = None  # (key, X_h) in eval mode without grad

    def prepare(self, train) -> None:
        edge_ids, items = hyperedge_items(train, self.hyperedges)
        a = hypergraph_operator(edge_ids, items, self.n_items, self.min_weight)
        device = self.order.device if self.order is not None else torch.device("cpu")
        order = locality_order(a)
        a = a.tocsr()[order][:, order]
        for name, m in zip(OPERATORS, (a, a.T)):
            for part, value in zip(CSR_PARTS, _csr_parts(m)):
                setattr(self, f"{name}_{part}", value.to(device))
        self.order = torch.from_numpy(order).to(device)
        self.rank = torch.from_numpy(np.argsort(order)).to(device)
        self._cache = None

    def _operators(self) -> tuple[tuple, tuple]:
        return tuple(tuple(getattr(self, f"{name}_{part}") for part in CSR_PARTS) for name in OPERATORS)

    def operator(self) -> Tensor:
        """A [N, N] in item order (row/col j = item j+1), as a sparse COO tensor."""
        crow, col, val = self._operators()[0]
        row = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff())
        return torch.sparse_coo_tensor(torch.stack([self.order[row], self.order[col]]), val,
                                       (self.n_items, self.n_items), check_invariants=True).coalesce()

    def propagate(self, x: Tensor) -> Tensor:
        """A x for x [N, d] in item order, differentiable in x."""
        return _Propagate.apply(x, *self._operators(), self.order, self.rank)

    def convolved_items(self, weight: Tensor) -> Tensor:
        """X_h [N, d] for items 1..N from the raw table rows 1..N."""
        if self.order is None:
            raise RuntimeError("DHCN: call model.prepare(train_split) before forward; the item hypergraph "
                               "is built from the training data only")
        key = (weight.data_ptr(), weight._version, id(self.order))  # a new `order` per `prepare`
        if not self.training and not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        scale = 1.0 / (self.layers + 1) if self.layer_pool == "mean" else 1.0
        x_h = _Convolve.apply(weight, *self._operators(), self.order, self.rank, self.layers, scale)
        self._cache = (key, x_h) if not self.training and not torch.is_grad_enabled() else None
        return x_h

    def line_graph_sessions(self, batch, weight: Tensor) -> Tensor:
        """Line-graph channel: session embeddings [B, d] smoothed over the batch's Jaccard overlaps."""
        B = int(batch.num_graphs)
        theta = scatter(weight[batch.x][batch.alias], batch.alias_batch, dim=0, dim_size=B, reduce="mean")
        _, item_col = torch.unique(batch.x, return_inverse=True)
        member = torch.zeros(B, int(item_col.max()) + 1, device=weight.device)
        member[batch.batch, item_col] = 1.0  # nodes are the unique items of each session
        inter = member @ member.t()
        size = member.sum(1)
        jaccard = inter / (size[:, None] + size[None, :] - inter)  # diagonal = 1 = A_J's zero + I
        propagate = jaccard / jaccard.sum(1, keepdim=True)
        outs = [theta]
        for _ in range(self.layers):
            theta = propagate @ theta
            outs.append(theta)
        return _pool_layers(outs, self.layer_pool)

    def forward(self, batch, embedding: nn.Embedding) -> Encoded:
        x_h = self.convolved_items(embedding.weight)
        node_h = x_h[batch.x - 1]
        enc = Encoded(node_h[batch.alias], batch.alias_batch, batch.last, batch.length, node_h=node_h, items=x_h)
        if self.training:
            enc.extras["line"] = self.line_graph_sessions(batch, embedding.weight)
        return enc


class DHCNReadout(Readout):
    """Soft attention with reversed position embeddings and a session-mean gate (no softmax)."""

    def __init__(self, dim: int, max_len: int = 200, beta_ssl: float = 0.01, ssl_reduction: str = "mean"):
        super().__init__()
        _check_choice("ssl_reduction", ssl_reduction, SSL_REDUCTIONS)
        self.max_len, self.beta_ssl, self.ssl_reduction = int(max_len), float(beta_ssl), ssl_reduction
        self.pos_embedding = nn.Embedding(self.max_len, dim)
        self.w1 = nn.Linear(2 * dim, dim)
        self.glu1 = nn.Linear(dim, dim)
        self.glu2 = nn.Linear(dim, dim, bias=False)
        self.w2 = nn.Linear(dim, 1, bias=False)

    def forward(self, enc: Encoded, batch) -> Tensor:
        B = enc.num_sessions
        if int(enc.length.max()) > self.max_len:
            raise ConfigError("overrides.max_len", f"DHCN: a session has {int(enc.length.max())} clicks but the "
                              f"position table has {self.max_len} rows; raise max_len", self.max_len)
        # Position counted from the end of the session: 0 = last click (the reference reverses sessions).
        reverse_pos = enc.last[enc.pos_batch] - torch.arange(enc.h.shape[0], device=enc.h.device)
        x = enc.h
        mean = scatter(x, enc.pos_batch, dim=0, dim_size=B, reduce="mean")
        z = torch.tanh(self.w1(torch.cat([self.pos_embedding(reverse_pos), x], dim=-1)))
        beta = self.w2(torch.sigmoid(self.glu1(z) + self.glu2(mean)[enc.pos_batch]))
        theta = scatter(beta * x, enc.pos_batch, dim=0, dim_size=B, reduce="sum")
        if self.training and "line" in enc.extras and self.beta_ssl:
            enc.aux_loss = self.beta_ssl * self.ssl_loss(theta, enc.extras["line"])
        return theta

    def ssl_loss(self, theta_h: Tensor, theta_l: Tensor) -> Tensor:
        """DGI-style contrast: true (hypergraph, line-graph) pairs vs a row- and column-shuffled θ_h."""
        corrupted = theta_h[torch.randperm(theta_h.shape[0], device=theta_h.device)]
        corrupted = corrupted[:, torch.randperm(theta_h.shape[1], device=theta_h.device)]
        pos = (theta_h * theta_l).sum(-1)
        neg = (theta_l * corrupted).sum(-1)
        per_session = -F.logsigmoid(pos) - F.logsigmoid(-neg)
        return per_session.mean() if self.ssl_reduction == "mean" else per_session.sum()

    def weight_groups(self) -> dict[str, list[str]]:
        return {"readout.query": ["glu2"], "readout.key": ["w1", "glu1"], "readout.other": ["w2"]}


@dataclass(frozen=True)
class DHCNConfig(TrainConfig):
    """DHCN (see the module docstring): d = 100, 3 layers, β = 0.01, Adam lr 1e-3 without weight decay or
    learning-rate decay."""

    l2: float = 0.0
    lr_decay: float = 1.0
    layers: int = 3
    layer_pool: str = "mean"
    hyperedges: str = "sessions"
    hyper_min_weight: float = 0.0
    max_len: int = 200
    beta_ssl: float = 0.01
    ssl_reduction: str = "mean"


SPECS = {
    "dhcn": ModelSpec(
        encoder=lambda n_items, cfg: DHCNEncoder(n_items, cfg["layers"], cfg["layer_pool"], cfg["hyperedges"],
                                                 cfg["hyper_min_weight"]),
        readout=lambda cfg: DHCNReadout(cfg["dim"], cfg["max_len"], cfg["beta_ssl"], cfg["ssl_reduction"]),
        scorer=lambda cfg: DotScorer(),
        defaults=DHCNConfig(),
        readout_params=("max_len", "beta_ssl", "ssl_reduction"),
        # DHCN's study varies the number of layers and the self-supervision weight β (here 0.001-0.1, around 0.01).
        space={"dim": space.dims(100), "lr": space.LR, "l2": space.L2, "layers": space.Int(1, 5),
               "beta_ssl": space.Float(1e-3, 1e-1, log=True)},
        doc="DHCN (AAAI 2021): weight-free hypergraph convolution over the training item hypergraph, "
            "position-aware soft attention, line-graph self-supervision in training",
    ),
}
