"""Counting baselines, the honest anchors: popularity (pop), session popularity (spop), session kNN (sknn).

Behaviour follows session-rec (rn5l/session-rec, `algorithms/baselines/pop.py`, `spop.py`,
`algorithms/knn/sknn.py` `ContextKNN`), rewritten vectorised over a whole `Batch`:

- `pop`: score(i) = number of training clicks on i (every click counts, duplicates within a session
  too — not undercounted per batch as in RecBole#1844). session-rec returns supp/(supp+1): the same order.
- `spop`: score(i) = count of i in the current prefix + a secondary global-popularity term in [0, 1).
  session-rec adds supp_i/(supp_i+1); we add the item's popularity *rank* scaled into [0, 1) instead, which
  orders items identically but stays distinct in float32 (supp/(supp+1) of two popular items collapse).
  session-rec gives the secondary term only to the top_n=100 popular items; we give it to all, which
  changes no rank <= 100, so no metric at K <= 100.
- `sknn` (Jannach & Ludewig 2017, session-rec ContextKNN with sampling='recent', remind=False,
  pop_boost=0, extend=False): candidate neighbours = training sessions sharing an item with the prefix;
  if more than `sample_size` (default 500), keep the most recent ones (by session end time); similarity =
  cosine of binary item sets |P ∩ S| / sqrt(|P| |S|) (or, with `similarity="jaccard"`, session-rec's
  `jaccard` |P ∩ S| / |P ∪ S|); keep the top `k` (default 100) by similarity (ties:
  the more recent session first — session-rec leaves them to set iteration order);
  score(i) = Σ over those neighbours containing i of their similarity.
  session-rec's `cosine` computes `li / sqrt(la) * sqrt(lb)` (precedence slip: li·sqrt(|P|)/sqrt(|S|));
  for one prefix that is the true cosine times the constant |P|, so neighbours and ranks are the same.
  `normalize=True` (divide by the max) likewise does not change ranks. Only training sessions are
  indexed (`fit`), so an evaluated session is never its own neighbour and never sees its future clicks.
  V-SKNN (position-decayed prefix weights) could follow as a variant; it is not implemented.

All three are `nn.Module`s with no parameters (`trainable = False`): `fit(train_split)` counts the training
sessions only (whole sessions, as `make_dataset` stores them), `forward(batch) -> [B, n_items]` float32
scores for items 1..n_items, deterministic (no random tie-breaking noise: ties are the evaluator's job).
pop returns a broadcast (read-only) view of its one score row; spop and sknn take an optional
`out=` [B, n_items] float32 tensor to write into, so evaluation reuses one buffer instead of allocating
(and page-faulting in) a fresh score matrix per batch.

`sparse_scores(batch) -> (rows, background)` gives the same scores without a dense row, for the
evaluator's sparse path: `rows` a float32 CSR [B, n_items] (column j = item j + 1, no duplicate entries)
of the items that score differently from the rest, `background` the score of every other item, a number
(0 for the kNN and rule anchors) or a finite float32 row [n_items] shared by all examples (pop, spop).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from ..data.sessions import Split
from .registry import BaselineSpec
from . import space


def training_clicks(train: Split, n_items: int) -> np.ndarray:
    """All clicks of the training sessions, checked against the item range 1..n_items."""
    items = np.asarray(train.sessions.items, dtype=np.int64)
    if items.size and (items.min() < 1 or items.max() > n_items):
        raise ValueError(f"training items must lie in 1..{n_items}; found {items.min()}..{items.max()}")
    return items


def clicks_in_order(train: Split, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every training click in scan order: (item, offset of its session's first click, its 0-based position
    in its session)."""
    items = training_clicks(train, n_items)
    starts = np.repeat(train.sessions.offsets[:-1], train.sessions.lengths)
    return items, starts, np.arange(len(items)) - starts


class CountingBaseline(nn.Module):
    """Base: no trainable parameters, `fit` on the training split, scores [B, n_items]."""

    trainable = False

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = int(n_items)
        self.fitted = False

    def fit(self, train: Split) -> "CountingBaseline":  # pragma: no cover - interface
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}: call fit(train_split) before scoring")


class Popularity(CountingBaseline):
    """score(i) = training clicks on i."""

    def __init__(self, n_items: int):
        super().__init__(n_items)
        self.register_buffer("counts", torch.zeros(self.n_items))

    def fit(self, train: Split) -> "Popularity":
        counts = np.bincount(training_clicks(train, self.n_items), minlength=self.n_items + 1)[1:]
        self.counts = torch.as_tensor(counts, dtype=torch.float32, device=self.counts.device)
        self.fitted = True
        return self

    def forward(self, batch) -> Tensor:
        self._check_fitted()
        # Every row is the same: a broadcast view, no [B, N] copy (an in-place write into it raises).
        return self.counts.to(batch.x.device).unsqueeze(0).expand(batch.num_graphs, -1)

    def sparse_scores(self, batch) -> tuple[sp.csr_matrix, np.ndarray]:
        self._check_fitted()
        return sp.csr_matrix((batch.num_graphs, self.n_items), dtype=np.float32), self.counts.cpu().numpy()


class SessionPopularity(Popularity):
    """score(i) = count of i in the prefix + popularity rank of i scaled into [0, 1)."""

    def __init__(self, n_items: int):
        super().__init__(n_items)
        self.register_buffer("secondary", torch.zeros(self.n_items))

    def fit(self, train: Split) -> "SessionPopularity":
        super().fit(train)
        counts = self.counts.double().cpu().numpy()
        # Dense rank of the popularity (equal counts share a level, so equal popularity stays a tie).
        levels, rank = np.unique(counts, return_inverse=True)
        self.secondary = torch.as_tensor(rank / len(levels), dtype=torch.float32, device=self.counts.device)
        return self

    def forward(self, batch, out: Tensor | None = None) -> Tensor:
        self._check_fitted()
        secondary = self.secondary.to(batch.x.device).unsqueeze(0)
        if out is None or out.dtype != secondary.dtype:
            scores = secondary.repeat(batch.num_graphs, 1)
        else:
            scores = out.copy_(secondary.expand(batch.num_graphs, -1))
        clicked = batch.x[batch.alias] - 1  # item (0-based) of every position
        ones = torch.ones_like(clicked, dtype=scores.dtype)
        # Integer-valued sums: exact and order-independent, so deterministic on GPU as well.
        scores.index_put_((batch.alias_batch, clicked), ones, accumulate=True)
        return scores

    def sparse_scores(self, batch) -> tuple[sp.csr_matrix, np.ndarray]:
        """The prefix's items over the secondary row."""
        self._check_fitted()
        example = batch.alias_batch.cpu().numpy()
        clicked = (batch.x[batch.alias] - 1).cpu().numpy()
        key, click = np.unique(example * self.n_items + clicked, return_inverse=True)
        secondary = self.secondary.cpu()
        values = secondary[torch.from_numpy(key % self.n_items)]
        # The dense path's float32 accumulation, one click at a time, so the sums round identically.
        values.index_put_((torch.from_numpy(click.reshape(-1)),), torch.ones(len(click)), accumulate=True)
        indptr = np.searchsorted(key, np.arange(batch.num_graphs + 1) * self.n_items)
        rows = sp.csr_matrix((values.numpy(), key % self.n_items, indptr), shape=(batch.num_graphs, self.n_items))
        return rows, secondary.numpy()


def _keep_last_per_row(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Keep the last `keep` stored entries of each row (the largest column ids; indices must be sorted)."""
    lengths = np.diff(m.indptr)
    pos = np.arange(m.nnz) - np.repeat(m.indptr[:-1], lengths)
    mask = pos >= np.repeat(lengths - keep, lengths)
    indptr = np.zeros_like(m.indptr)
    np.cumsum(np.minimum(lengths, keep), out=indptr[1:])
    return sp.csr_matrix((m.data[mask], m.indices[mask], indptr), shape=m.shape)


class CandidateBaseline(CountingBaseline):
    """A baseline whose scores are 0 except on a few candidate items per example (kNN and rule anchors):
    subclasses give those as `candidate_scores`, dense rows and sparse rows both come from them."""

    def candidate_scores(self, batch) -> sp.spmatrix:  # pragma: no cover - interface
        """[B, n_items + 1] scores (column 0 the padding id), no duplicate entries."""
        raise NotImplementedError

    def forward(self, batch, out: Tensor | None = None) -> Tensor:
        return dense_scores(self.candidate_scores(batch), batch, self.n_items, out)

    def sparse_scores(self, batch) -> tuple[sp.csr_matrix, float]:
        return item_rows(self.candidate_scores(batch), self.n_items), 0.0


class SessionKNN(CandidateBaseline):
    """Session-based kNN over a sparse session x item matrix (see module docstring)."""

    SIMILARITIES = ("cosine", "jaccard")

    def __init__(self, n_items: int, k: int = 100, sample_size: int = 500, similarity: str = "cosine"):
        super().__init__(n_items)
        if k < 1 or sample_size < 0:
            raise ValueError(f"sknn needs k >= 1 and sample_size >= 0 (0 = all), got k={k}, sample_size={sample_size}")
        if similarity not in self.SIMILARITIES:
            raise ValueError(f"sknn similarity {similarity!r}: choose one of {', '.join(self.SIMILARITIES)}")
        self.k, self.sample_size, self.similarity = int(k), int(sample_size), similarity

    def fit(self, train: Split) -> "SessionKNN":
        sessions = train.sessions
        items = training_clicks(train, self.n_items)
        n = len(sessions)
        # Rows in recency order (row r = the r-th session to end), so "most recent" = largest row id.
        if sessions.end_time is None:
            self.recency_order = np.arange(n)  # every supported layout stores sessions in time order
        else:
            self.recency_order = np.argsort(sessions.end_time, kind="stable")
        self.rank_of_session = np.empty(n, dtype=np.int64)
        self.rank_of_session[self.recency_order] = np.arange(n)
        rows = np.repeat(self.rank_of_session, sessions.lengths)
        m = sp.csr_matrix((np.ones(len(items)), (rows, items)), shape=(n, self.n_items + 1))
        m.sum_duplicates()
        m.data[:] = 1.0  # binary item sets
        self.session_items = m
        self.session_size = np.diff(m.indptr).astype(np.float64)
        item_sessions = m.T.tocsr()
        item_sessions.sort_indices()
        # The `sample_size` most recent sessions of the union of the prefix items' sessions are among the
        # `sample_size` most recent sessions of each item, so per-item truncation loses no candidate.
        if self.sample_size:
            item_sessions = _keep_last_per_row(item_sessions, self.sample_size)
        self.item_sessions = item_sessions
        self.fitted = True
        return self

    def _prefix_sets(self, batch) -> sp.csr_matrix:
        """Binary [B, n_items + 1] item sets of the prefixes (graph nodes are the unique items)."""
        rows = batch.batch.cpu().numpy()
        cols = batch.x.cpu().numpy()
        q = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(batch.num_graphs, self.n_items + 1))
        q.data[:] = 1.0
        return q

    def candidates_of(self, q: sp.csr_matrix) -> sp.csr_matrix:
        """[B, sessions] overlaps |P ∩ S| of the binary prefix sets `q` with the `sample_size` most recent
        sessions sharing an item with each prefix. Exact after the per-item truncation too: a kept
        candidate is among the `sample_size` most recent sessions of the union, hence of every prefix item
        it contains, so none of its shared items was truncated away."""
        candidates = (q @ self.item_sessions).tocsr()
        candidates.sort_indices()
        return _keep_last_per_row(candidates, self.sample_size) if self.sample_size else candidates

    def neighbours(self, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k neighbours per example: (example row, recency rank of the training session, similarity),
        sorted by row, then similarity descending, then recency descending."""
        self._check_fitted()
        q = self._prefix_sets(batch)
        candidates = self.candidates_of(q)
        per_row = np.diff(candidates.indptr)
        row = np.repeat(np.arange(batch.num_graphs, dtype=np.int64), per_row)
        sess, overlap = candidates.indices.astype(np.int64), candidates.data
        prefix_size = np.diff(q.indptr).astype(np.float64)
        if self.similarity == "jaccard":
            sim = overlap / (prefix_size[row] + self.session_size[sess] - overlap)
        else:
            sim = overlap / np.sqrt(prefix_size[row] * self.session_size[sess])
        # Rows hold sessions in ascending recency: reversed, a stable sort on (row, -sim) breaks ties by
        # recency descending without a third key.
        row, sess, sim = row[::-1], sess[::-1], sim[::-1]
        order = np.lexsort((-sim, row))
        row, sess, sim = row[order], sess[order], sim[order]
        top = (np.arange(len(row)) - np.repeat(candidates.indptr[:-1], per_row)) < self.k
        return row[top], sess[top], sim[top]

    def candidate_scores(self, batch) -> sp.csr_matrix:
        row, sess, sim = self.neighbours(batch)
        weights = sp.csr_matrix((sim, (row, sess)), shape=(batch.num_graphs, self.session_items.shape[0]))
        return weights @ self.session_items  # float64 sums, sparse


def item_rows(scores: sp.spmatrix, n_items: int) -> sp.csr_matrix:
    """Float32 CSR [B, n_items] of items 1..n_items (column j = item j + 1) from [B, n_items + 1] rows
    whose column 0 is the padding id; the one float64 -> float32 cast of both evaluation paths."""
    return sp.csr_matrix(scores)[:, 1 : n_items + 1].astype(np.float32)


def dense_scores(scores: sp.spmatrix, batch, n_items: int, out: Tensor | None = None) -> Tensor:
    """[B, n_items] float32 scores of items 1..n_items from sparse [B, n_items + 1] rows (column 0 is the
    padding id), written into `out` when given (as toarray and a cast, without the dense float64 copy)."""
    scores = item_rows(scores, n_items).tocoo()
    if out is None or out.dtype != torch.float32:
        out = torch.zeros(batch.num_graphs, n_items, device=batch.x.device)
    else:
        out.zero_()
    at = [torch.from_numpy(a.astype(np.int64)).to(out.device) for a in (scores.row, scores.col)]
    out[at[0], at[1]] = torch.from_numpy(scores.data).to(out.device)
    return out


@dataclass(frozen=True)
class SKNNConfig:
    """session-rec's configuration of ContextKNN (its class defaults differ: 1000 candidates, jaccard): the
    100 most similar (cosine) of the 500 most recent candidate sessions."""

    k: int = 100
    sample_size: int = 500
    similarity: str = "cosine"


SPECS = {
    "pop": BaselineSpec(
        build=lambda n_items, cfg: Popularity(n_items),
        doc="global popularity: training clicks per item",
    ),
    "spop": BaselineSpec(
        build=lambda n_items, cfg: SessionPopularity(n_items),
        doc="session popularity: clicks in the prefix, global popularity as tie-breaker",
    ),
    "sknn": BaselineSpec(
        build=lambda n_items, cfg: SessionKNN(n_items, cfg["k"], cfg["sample_size"], cfg["similarity"]),
        defaults=SKNNConfig(),
        # session-rec's tuning ranges (its conf/ `params_opt`; Ludewig et al. 2021).
        space={"k": space.Choice((50, 100, 500, 1000, 1500)), "sample_size": space.Choice((500, 1000, 2500, 5000, 10000)),
               "similarity": space.Choice(SessionKNN.SIMILARITIES)},
        doc="session kNN (session-rec ContextKNN): cosine on item sets, 500 most recent candidates, top 100",
    ),
}
