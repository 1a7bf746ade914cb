"""V-SKNN (Ludewig & Jannach 2018; session-rec `algorithms/knn/vsknn.py` `VMContextKNN`): session kNN whose
prefix is a vector with position-decayed weights, and whose neighbours' votes decay with how far back the
prefix's last shared item lies.

- Candidates as `sknn`: training sessions that share an item with the prefix, the `sample_size` most
  recent of them (session-rec's default 1000).
- Prefix weights: an item's weight comes from its last position c of L clicks (`weighting`: div c/L,
  linear max(0, 1 - 0.1 (L - c)), same 1, log 1/log10(L - c + 1.7), quadratic (c/L)^2).
- Similarity (`similarity`): `vec` (default) sum of the weights of the shared items / number of distinct
  prefix items; `cosine` that sum / (sqrt(sum of squared weights) sqrt(|S|)). The `k` most similar are the
  neighbours (ties: the more recent first).
- Score of item i = sum over neighbours S containing i of sim(S) * decay(step), step = 1 + how many clicks
  before the end of the prefix its most recent item shared with S lies (`weighting_score`: div 1/step,
  linear 1 - 0.1 step, same, log 1/log10(step + 1.7), quadratic 1/step^2). `remind=False` leaves out
  the prefix's own items.

session-rec's `linear` prefix weight is 0 for every position after the 10th (its test `i <= 10` counts
from the start); ours decays over the last 10 clicks as the name says. Its dwelling-time, idf, time-decay
and `extend` options are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import space
from .baselines import SessionKNN, clicks_in_order
from .registry import BaselineSpec

PREFIX_WEIGHTS = {
    "div": lambda c, n: c / n,
    "linear": lambda c, n: np.maximum(0.0, 1.0 - 0.1 * (n - c)),
    "same": lambda c, n: np.ones_like(c, dtype=np.float64),
    "log": lambda c, n: 1.0 / np.log10(n - c + 1.7),
    "quadratic": lambda c, n: (c / n) ** 2,
}
STEP_DECAYS = {
    "div": lambda s: 1.0 / s,
    "linear": lambda s: np.where(s <= 100, 1.0 - 0.1 * s, 0.0),
    "same": lambda s: np.ones_like(s, dtype=np.float64),
    "log": lambda s: 1.0 / np.log10(s + 1.7),
    "quadratic": lambda s: 1.0 / (s * s),
}


def prefix_items(batch):
    """Distinct items of every prefix: (example, item, last position c in 1..L, length L), sorted by
    example then item."""
    example = batch.alias_batch.cpu().numpy()
    item = batch.x[batch.alias].cpu().numpy()
    lengths = np.bincount(example, minlength=batch.num_graphs)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    size = int(item.max(initial=0)) + 1
    key, position = last_positions(example * size + item, np.arange(len(item)) - starts[example] + 1)
    return key // size, key % size, position, lengths[key // size]


def last_positions(key, position):
    """Each distinct key once, sorted, with its largest position."""
    order = np.lexsort((-position, key))
    key, position = key[order], position[order]
    first = np.concatenate([[True], key[1:] != key[:-1]])
    return key[first], position[first]


class PrefixVectorKNN(SessionKNN):
    """The machinery of the kNN anchors that weight the prefix's items (V-SKNN, STAN): candidate sessions
    as `sknn`, which prefix items each shares, and the top k by similarity."""

    def fit(self, train):
        super().fit(train)
        # Every (session row, item) once, sorted by key, with the item's last position in that session.
        items, _, index = clicks_in_order(train, self.n_items)
        key = np.repeat(self.rank_of_session, train.sessions.lengths) * (self.n_items + 1) + items
        self.session_item_keys, self.last_position = last_positions(key, index + 1)
        return self

    def candidates(self, batch, example, item) -> tuple[np.ndarray, np.ndarray]:
        """(example, session row) of the `sample_size` most recent sessions sharing an item with each prefix."""
        q = sp.csr_matrix((np.ones(len(item)), (example, item)), shape=(batch.num_graphs, self.n_items + 1))
        found = self.candidates_of(q)
        return np.repeat(np.arange(batch.num_graphs, dtype=np.int64), np.diff(found.indptr)), found.indices.astype(np.int64)

    def shared(self, row, sess, example, item, n_examples: int):
        """Every (candidate, prefix item) pair whose item the session holds: (candidate index, prefix item
        index, index into `session_item_keys` / `last_position`)."""
        per_example = np.bincount(example, minlength=n_examples)
        first_item = np.concatenate([[0], np.cumsum(per_example)[:-1]])
        pair = np.repeat(np.arange(len(row)), per_example[row])
        offset = np.arange(len(pair)) - np.repeat(np.cumsum(per_example[row]) - per_example[row], per_example[row])
        at = first_item[row[pair]] + offset
        keys = sess[pair] * (self.n_items + 1) + item[at]
        found = np.minimum(np.searchsorted(self.session_item_keys, keys), len(self.session_item_keys) - 1)
        hit = self.session_item_keys[found] == keys
        return pair[hit], at[hit], found[hit]

    def top_k(self, n_examples: int, row, sess, sim, *extra):
        """The k most similar candidates per example with sim > 0, sorted by example then similarity;
        ties go to the more recent session (similarities compared rounded, so that sums of the same weights
        in another order tie too)."""
        keep = sim > 0
        arrays = [a[keep][::-1] for a in (row, sess, sim, *extra)]  # reversed recency for the stable sort
        order = np.lexsort((-np.round(arrays[2], 12), arrays[0]))
        arrays = [a[order] for a in arrays]
        start = np.concatenate([[0], np.cumsum(np.bincount(arrays[0], minlength=n_examples))[:-1]])
        top = np.arange(len(arrays[0])) - start[arrays[0]] < self.k
        return [a[top] for a in arrays]

    def without_prefix_items(self, scores, batch):
        example, item, _, _ = prefix_items(batch)
        clicked = sp.csr_matrix((np.ones(len(item)), (example, item)), shape=scores.shape)
        return scores - scores.multiply(clicked)


class VSKNN(PrefixVectorKNN):
    SIMILARITIES = ("vec", "cosine")

    def __init__(self, n_items: int, k: int = 100, sample_size: int = 1000, similarity: str = "vec",
                 weighting: str = "div", weighting_score: str = "div", remind: bool = True):
        super().__init__(n_items, k, sample_size)
        for name, value, allowed in (("similarity", similarity, self.SIMILARITIES), ("weighting", weighting, PREFIX_WEIGHTS),
                                     ("weighting_score", weighting_score, STEP_DECAYS)):
            if value not in allowed:
                raise ValueError(f"vsknn {name} {value!r}: choose one of {', '.join(allowed)}")
        self.similarity, self.weighting, self.weighting_score, self.remind = similarity, weighting, weighting_score, remind

    def neighbours(self, batch):
        """Top-k neighbours per example: (example, recency rank of the session, similarity, step)."""
        self._check_fitted()
        example, item, position, length = prefix_items(batch)
        weight = PREFIX_WEIGHTS[self.weighting](position.astype(np.float64), length.astype(np.float64))
        row, sess = self.candidates(batch, example, item)
        pair, at, _ = self.shared(row, sess, example, item, batch.num_graphs)
        overlap = np.bincount(pair, weights=weight[at], minlength=len(row))
        step = np.full(len(row), np.iinfo(np.int64).max)
        np.minimum.at(step, pair, (length - position + 1)[at])  # the most recent shared prefix item
        if self.similarity == "vec":
            sim = overlap / np.bincount(example, minlength=batch.num_graphs)[row]
        else:
            norm = np.sqrt(np.bincount(example, weights=weight * weight, minlength=batch.num_graphs))
            sim = overlap / (norm[row] * np.sqrt(self.session_size[sess]))
        return self.top_k(batch.num_graphs, row, sess, sim, step)

    def candidate_scores(self, batch):
        row, sess, sim, step = self.neighbours(batch)
        votes = sim * STEP_DECAYS[self.weighting_score](step.astype(np.float64))
        weights = sp.csr_matrix((votes, (row, sess)), shape=(batch.num_graphs, self.session_items.shape[0]))
        scores = (weights @ self.session_items).tocsr()
        return scores if self.remind else self.without_prefix_items(scores, batch)


@dataclass(frozen=True)
class VSKNNConfig:
    """session-rec's VMContextKNN defaults (k = 100 as in its configurations): 1000 recent candidates,
    vec similarity, div prefix weights and div vote decay, the prefix's items recommended too."""

    k: int = 100
    sample_size: int = 1000
    similarity: str = "vec"
    weighting: str = "div"
    weighting_score: str = "div"
    remind: bool = True


SPECS = {
    "vsknn": BaselineSpec(
        build=lambda n_items, cfg: VSKNN(n_items, cfg["k"], cfg["sample_size"], cfg["similarity"], cfg["weighting"],
                                         cfg["weighting_score"], cfg["remind"]),
        defaults=VSKNNConfig(),
        # session-rec's tuning ranges (its conf/ `params_opt`; Ludewig et al. 2021).
        space={"k": space.Choice((50, 100, 500, 1000, 1500)), "sample_size": space.Choice((500, 1000, 2500, 5000, 10000)),
               "similarity": space.Choice(VSKNN.SIMILARITIES), "weighting": space.Choice(tuple(PREFIX_WEIGHTS)),
               "weighting_score": space.Choice(tuple(STEP_DECAYS)), "remind": space.Choice((True, False))},
        doc="V-SKNN (session-rec VMContextKNN): session kNN with position-decayed prefix weights and vote decay",
    ),
}
