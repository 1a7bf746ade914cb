"""The shared model interface: encoder ▸ readout ▸ scorer.

- An **encoder** maps a session-graph `Batch` (see `sbr_bench.data.graphs`) and the item embedding table to
  `Encoded`: the hidden state of every *position* of every session in one packed tensor `[P, d]`
  (click order, sessions one after another, exactly the order of `batch.alias`), plus optional node
  states, side outputs (e.g. SGNN-HN's star node) and an auxiliary loss (e.g. DHCN's SSL term).
- A **readout** maps `Encoded` to one vector per session `[B, d]` with PyG-style per-session ops
  (`torch_geometric.utils.softmax`, `scatter`), never padding.
- A **scorer** maps session vectors and the candidate table `[N, d]` (items 1..N) to scores `[B, N]`.

Baselines fitted by counting (pop, s-pop, sknn) are not `SBRModel`s: they have `trainable = False`,
`fit(train_split)` and `forward(batch) -> [B, N]` scores, and are evaluated the same way.

Any encoder composes with any readout (`--models srgnn+attenmixer`). Every module lists its weight
groups along the paper's Figure 2 split (`weight_groups()`: group name -> module paths of `nn.Linear`s
relative to that module), which is what the SparseVD wrapper converts and measures. Group names:
`gnn.propagation`, `gnn.gate_ih`, `gnn.gate_hh`, `gnn.other`, `readout.query`, `readout.key`,
`readout.value`, `readout.transform`, `readout.other`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch import Tensor, nn

from .scoring import cross_entropy, normalised_scores, table_scores


@dataclass
class Encoded:
    h: Tensor  # [P, d] hidden state per position, packed in batch.alias order
    pos_batch: Tensor  # [P] session of each position (= batch.alias_batch)
    last: Tensor  # [B] index into h of each session's last position (= batch.last)
    length: Tensor  # [B] number of positions of each session
    node_h: Tensor | None = None  # [nodes, d] node states, for graph encoders
    items: Tensor | None = None  # [N, d] candidate table override (DHCN scores against convolved items)
    extras: dict = field(default_factory=dict)  # model-specific side outputs, e.g. "star": [B, d]
    aux_loss: Tensor | None = None  # added to the training loss (e.g. DHCN's self-supervised term)

    @property
    def last_h(self) -> Tensor:
        return self.h[self.last]

    @property
    def num_sessions(self) -> int:
        return self.last.numel()


def gru_update(gx: Tensor, gh: Tensor, h: Tensor, flip: bool = False) -> Tensor:
    """One GRU step from the input projection gx = x2h(x) and hidden projection gh = h2h(h), gates in
    nn.GRU's order (r, z, n): h' = (1-z)·n + z·h; `flip` is the RecBole/GC-SAN-code convention
    h' = (1-z)·h + z·n. Models keep x2h/h2h as separate Linears so SparseVD can measure each."""
    xr, xz, xn = gx.chunk(3, dim=-1)
    hr, hz, hn = gh.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * h + z * n if flip else (1 - z) * n + z * h


def gru_over_prefixes(gi: Tensor, h2h: nn.Module, batch) -> Tensor:
    """A GRU over every session of `batch` from a zero state: gi = x2h(x) of all positions [P, 3d] (packed,
    click order) -> the state at every position [P, d], packed the same way (NARM, GRU4Rec)."""
    # Sessions sorted by length (longest first): at step t the sessions still running are a prefix of
    # that order, so each step updates only them (no work on padding; pack_padded_sequence's idea).
    length, start = batch.length, batch.last - batch.length + 1
    order = torch.sort(length, descending=True, stable=True).indices
    running = torch.bincount(length, minlength=int(length.max()) + 1).flip(0).cumsum(0).flip(0)[1:].tolist()
    start_sorted = start[order]
    h = gi.new_zeros(length.numel(), gi.shape[1] // 3)
    states, positions = [], []
    for t, k in enumerate(running):
        pos = start_sorted[:k] + t
        h = gru_update(gi[pos], h2h(h[:k]), h[:k])
        states.append(h)
        positions.append(pos)
    return gi.new_empty(gi.shape[0], h.shape[1]).index_copy(0, torch.cat(positions), torch.cat(states))


class Component(nn.Module):
    """Base for encoders and readouts: declares its Figure-2 weight groups."""

    def weight_groups(self) -> dict[str, list[str]]:
        return {}


class Encoder(Component):
    extra_graphs: tuple = ()  # extra graphs the collate must build, see graphs.EXTRA_GRAPHS

    def forward(self, batch, embedding: nn.Embedding) -> Encoded:  # pragma: no cover - interface
        raise NotImplementedError


class Readout(Component):
    def forward(self, enc: Encoded, batch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class EmbeddingEncoder(Encoder):
    """No propagation: each position's state is its item embedding (Atten-Mixer's default encoder)."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch, embedding):
        h = self.dropout(embedding(batch.x))[batch.alias]
        return Encoded(h, batch.alias_batch, batch.last, batch.length)


class _SparseLookups:
    """The item embedding as an encoder sees it in training: lookups with a sparse gradient (the rows
    looked up) into `table` (the alias of the embedding's weight that `_TwoUses` gives), instead of a zero
    [N + 1, d] table and an index_add into it every step. `.weight` and the rest are the embedding's own."""

    def __init__(self, embedding: nn.Embedding, table: Tensor):
        self.embedding, self.table = embedding, table

    def __call__(self, index: Tensor) -> Tensor:
        e = self.embedding
        return F.embedding(index, self.table, e.padding_idx, e.max_norm, e.norm_type, sparse=True)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("embedding", "table"):  # copy/pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self.embedding, name)


class _TwoUses(torch.autograd.Function):
    """The embedding table twice, for the scoring products and for the encoder's sparse lookups. Both
    gradients meet here, and the looked-up rows are added into the products' dense table gradient in
    place; arriving at the table separately, a dense and then a sparse gradient, autograd would sum them
    into a fresh copy of the whole table. The table itself always gets a dense gradient (what optimizers
    and DDP's reducer take), also when it is never scored against."""

    @staticmethod
    def forward(ctx, weight: Tensor):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a zero table
        return weight.detach(), weight.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, dense: Tensor | None, rows: Tensor | None):
        if dense is None or rows is None:
            return rows.to_dense() if dense is None else dense
        if dense.is_sparse or dense._base is not None or not dense.is_contiguous():  # not one we may reuse
            return dense + rows
        return dense.add_(rows)


class _TransformedEmbedding:
    """An embedding table seen through a `NormalisedInput`: lookups and `.weight` come out transformed."""

    def __init__(self, embedding: nn.Embedding, owner: "NormalisedInput"):
        self.embedding, self.owner = embedding, owner
        self.embedding_dim = embedding.embedding_dim

    def __call__(self, index: Tensor) -> Tensor:
        return self.owner.transform(self.embedding(index))

    @property
    def weight(self) -> Tensor:
        return self.owner.table(self.embedding)


class NormalisedInput(Encoder):
    """Normalise (L2 or LayerNorm) and drop out the item embeddings before `encoder` sees them: what the
    Atten-Mixer paper's Figure 4 and its "GNN w/ Atten-Mixer" code do in front of any encoder (L2, dropout
    0.1); its SGNN-HN w/ Atten-Mixer applies a LayerNorm instead."""

    def __init__(self, encoder: Encoder, dim: int, norm: str = "l2", dropout: float = 0.0):
        super().__init__()
        if norm not in ("l2", "layernorm", "none"):
            raise ValueError(f"input_norm must be l2, layernorm or none, not {norm!r}")
        self.encoder, self.norm = encoder, norm
        self.layernorm = nn.LayerNorm(dim) if norm == "layernorm" else None
        self.dropout = nn.Dropout(dropout)
        self.extra_graphs = tuple(encoder.extra_graphs)
        self._table = None
        if hasattr(encoder, "out_dim"):
            self.out_dim = encoder.out_dim

    def prepare(self, train) -> None:
        if hasattr(self.encoder, "prepare"):
            self.encoder.prepare(train)

    def weight_groups(self) -> dict[str, list[str]]:
        return {g: [f"encoder.{p}" for p in paths] for g, paths in self.encoder.weight_groups().items()}

    def table(self, embedding: nn.Embedding) -> Tensor:
        """The whole transformed table. In evaluation it is one tensor per state of the raw table (keyed
        on its storage and version), so encoders that cache work on the table (DHCN) see it change
        exactly when the weights do."""
        raw = embedding.weight
        if self.training or torch.is_grad_enabled():
            self._table = None
            return self.transform(raw)
        key = (raw.data_ptr(), raw._version)
        if getattr(self, "_table", None) is None or self._table[0] != key:
            self._table = (key, self.transform(raw))
        return self._table[1]

    def transform(self, x: Tensor) -> Tensor:
        if self.norm == "l2":
            x = F.normalize(x, dim=-1)
        elif self.norm == "layernorm":
            x = self.layernorm(x)
        return self.dropout(x)

    def forward(self, batch, embedding) -> Encoded:
        return self.encoder(batch, _TransformedEmbedding(embedding, self))


class Scorer(nn.Module):
    """Base of the built-in scorers: session vectors [B, d] and the candidate table [N, d] -> scores [B, N].
    `precision` (the model's config key, set when the model is built) is the arithmetic of the scoring
    products: fp32, tf32 or bf16 (see scoring.py)."""

    precision = "fp32"


class DotScorer(Scorer):
    """scores = s · e_j (SR-GNN, GC-SAN, LESSR, NARM, DHCN)."""

    def forward(self, s: Tensor, items: Tensor, out: Tensor | None = None) -> Tensor:
        # `out` (no-grad evaluation only): write into a reused [B, N] buffer
        return table_scores(s, items, self.precision, out=out)


class CosineScorer(Scorer):
    """scores = sigma · cos(s, e_j), optional dropout on the candidate table in training (NISER-style;
    Atten-Mixer uses sigma = 12, SGNN-HN's layer-normalised variant uses 12 too)."""

    def __init__(self, sigma: float = 12.0, item_dropout: float = 0.0):
        super().__init__()
        self.sigma = sigma
        self.item_dropout = nn.Dropout(item_dropout)

    def forward(self, s: Tensor, items: Tensor, out: Tensor | None = None) -> Tensor:
        # = σ·normalize(s) @ dropout(normalize(items))ᵀ without normalising the table (see scoring.py)
        return normalised_scores(F.normalize(s, dim=-1), items, self.sigma, dropout=self.item_dropout.p,
                                 training=self.training, out=out, precision=self.precision)


class SBRModel(nn.Module):
    """embedding + encoder + readout + scorer, trained with cross-entropy over all items."""

    trainable = True
    sparse_lookups = True  # encoders' lookups with sparse gradients in training (_SparseLookups, _TwoUses)

    def __init__(self, n_items: int, dim: int, encoder: Encoder, readout: Readout, scorer: nn.Module):
        super().__init__()
        self.n_items = n_items
        # Row 0 is the padding id; it is never a candidate (scores cover items 1..n_items).
        self.embedding = nn.Embedding(n_items + 1, dim)
        self.encoder, self.readout, self.scorer = encoder, readout, scorer

    @property
    def extra_graphs(self) -> tuple:
        return tuple(self.encoder.extra_graphs) + tuple(getattr(self.readout, "extra_graphs", ()))

    def reset_parameters(self, std: float | None = None) -> None:
        """SR-GNN's init, used by all reference code bases: every parameter ~ U(-1/sqrt(d), 1/sqrt(d))."""
        bound = 1.0 / math.sqrt(self.embedding.embedding_dim) if std is None else std
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def prepare(self, train) -> None:
        """Give components that need global training structure (DHCN's item hypergraph) the training
        `Split` before training: the split the model trains on (train, or train + validation under refit
        and literature selection), never the test split."""
        for module in (self.encoder, self.readout):
            if hasattr(module, "prepare"):
                module.prepare(train)

    def encode(self, batch) -> Encoded:
        return self._encode(batch)[0]

    def _encode(self, batch) -> tuple[Encoded, Tensor]:
        """The encoder output and the embedding table to score against (an alias in training, _TwoUses)."""
        e = self.embedding
        sparse = (self.sparse_lookups and torch.is_grad_enabled() and e.weight.requires_grad
                  and type(e) is nn.Embedding and not e.scale_grad_by_freq)  # else the module's own lookups
        if not sparse:
            return self.encoder(batch, e), e.weight
        scored, looked_up = _TwoUses.apply(e.weight)
        return self.encoder(batch, _SparseLookups(e, looked_up)), scored

    def session_repr(self, batch) -> tuple[Tensor, Tensor, Encoded]:
        """Session vectors [B, d], the candidate table [N, d] and the encoder output."""
        enc, table = self._encode(batch)
        s = self.readout(enc, batch)
        items = enc.items if enc.items is not None else table[1:]
        return s, items, enc

    def forward(self, batch) -> Tensor:
        s, items, _ = self.session_repr(batch)
        return self.scorer(s, items)

    def loss(self, batch) -> tuple[Tensor, dict]:
        s, items, enc = self.session_repr(batch)
        ce = cross_entropy(self.scorer(s, items), batch.y - 1)
        parts = {"ce": ce.detach()}
        if enc.aux_loss is not None:
            parts["aux"] = enc.aux_loss.detach()
            return ce + enc.aux_loss, parts
        return ce, parts

    def weight_groups(self) -> dict[str, list[str]]:
        """Figure-2 groups over the whole model: group -> full module paths of nn.Linear layers."""
        groups: dict[str, list[str]] = {}
        for prefix, module in (("encoder", self.encoder), ("readout", self.readout)):
            for name, paths in module.weight_groups().items():
                groups.setdefault(name, []).extend(f"{prefix}.{p}" for p in paths)
        return groups
