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
  is kept as a sparse COO buffer (not saved in checkpoints: call `prepare` again after loading). The
  convolution applies it as CSR factors, A x = (D^-1 H B^-1)(H^T x) when that touches fewer entries than
  A itself (no `hyper_min_weight` pruning), with precomputed transposes for the backward.
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
import warnings

import numpy as np
import scipy.sparse as sp
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


FACTORS = ("op_left", "op_right", "op_left_t", "op_right_t")  # A = left @ right (right absent: A = left)
CSR_PARTS = ("crow", "col", "val")


def _csr_parts(m: sp.spmatrix) -> tuple[Tensor, Tensor, Tensor]:
    m = m.tocsr()
    m.sort_indices()
    return (torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)))


def _csr(crow: Tensor, col: Tensor, val: Tensor, n_cols: int) -> Tensor:
    with warnings.catch_warnings():  # torch says CSR support is "beta"; sparse.mm on CSR is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, (crow.numel() - 1, n_cols))


class _Propagate(torch.autograd.Function):
    """y = A x with A = F_1 ... F_k given as CSR factors (k = 1 or 2); the backward applies the
    precomputed transposes (A^T g = F_k^T ... F_1^T g) instead of transposing a COO matrix every step."""

    @staticmethod
    def forward(ctx, x: Tensor, factors: tuple, transposes: tuple) -> Tensor:
        ctx.transposes = transposes
        for f in reversed(factors):
            x = torch.sparse.mm(f, x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        for f in ctx.transposes:
            grad = torch.sparse.mm(f, grad)
        return grad, None, None


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
        self.register_buffer("adjacency", None, persistent=False)
        # A as CSR factors and their transposes for the convolution (see `prepare`), kept as their dense
        # parts (row pointers, columns, values) so that the module copies, pickles and moves as usual
        for name in FACTORS:
            for part in CSR_PARTS:
                self.register_buffer(f"{name}_{part}", None, persistent=False)
        self.op_cols: dict[str, int] = {}
        self._cache = None  # (key, X_h) in eval mode without grad

    def prepare(self, train) -> None:
        edge_ids, items = hyperedge_items(train, self.hyperedges)
        factors = hypergraph_factors(edge_ids, items, self.n_items)
        a = hypergraph_operator(edge_ids, items, self.n_items, self.min_weight, factors)
        index = torch.from_numpy(np.stack([a.row, a.col]).astype(np.int64))
        device = self.adjacency.device if self.adjacency is not None else torch.device("cpu")
        self.adjacency = torch.sparse_coo_tensor(
            index, torch.from_numpy(a.data.astype(np.float32)), a.shape, check_invariants=True).coalesce().to(device)
        # A x as D^-1 H B^-1 (H^T x) touches nnz(H) twice instead of nnz(A) (about 2.3M vs 2 x 0.7M on
        # Diginetica's sessions); only exact without the min_weight pruning of A's entries.
        left, right = factors
        if self.min_weight > 0 or left.nnz + right.nnz >= a.nnz:
            left, right = a, None
        mats = {"op_left": left, "op_left_t": left.T}
        if right is not None:
            mats.update(op_right=right, op_right_t=right.T)
        self.op_cols = {}
        for name in FACTORS:
            parts = _csr_parts(mats[name]) if name in mats else (None,) * len(CSR_PARTS)
            for part, value in zip(CSR_PARTS, parts):
                setattr(self, f"{name}_{part}", None if value is None else value.to(device))
            if name in mats:
                self.op_cols[name] = mats[name].shape[1]
        self._cache = None

    @property
    def factorised(self) -> bool:
        return "op_right" in self.op_cols

    def _factor(self, name: str) -> Tensor:
        return _csr(*(getattr(self, f"{name}_{part}") for part in CSR_PARTS), self.op_cols[name])

    def propagate(self, x: Tensor) -> Tensor:
        """A x, differentiable in x."""
        names = ("op_left", "op_right") if self.factorised else ("op_left",)
        factors = tuple(self._factor(n) for n in names)
        transposes = tuple(self._factor(f"{n}_t") for n in names)
        return _Propagate.apply(x, factors, transposes)

    def convolved_items(self, weight: Tensor) -> Tensor:
        """X_h [N, d] for items 1..N from the raw table rows 1..N."""
        if self.adjacency is None:
            raise RuntimeError("DHCN: call model.prepare(train_split) before forward; the item hypergraph "
                               "is built from the training data only")
        key = (weight.data_ptr(), weight._version, id(self.adjacency))
        if not self.training and not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        x = weight[1:]
        outs = [x]
        for _ in range(self.layers):
            x = self.propagate(x)
            outs.append(x)
        x_h = _pool_layers(outs, self.layer_pool)
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
