"""STAN (Garg et al., SIGIR 2019: sequence and time aware neighbourhood; session-rec `algorithms/knn/stan.py`):
session kNN with three exponential decays.

- Prefix weights (λ_spw): an item's weight is exp((c - L) / λ_spw), c its last position of L clicks.
- Similarity: the weighted cosine sum over shared items of the weights / (sqrt(sum of squared weights)
  sqrt(|S|)), times exp(-(t - t_S) / λ_snh) for a training session that ended at t_S (λ_snh in days).
  t, the time of the recommendation, is the same factor for every candidate of one prefix, so neighbours
  and ranks do not depend on it: we use the latest training time, and need no clock time for the prefix.
- Votes (λ_inh): neighbour S votes sim * exp(-|p(i) - p*| / λ_inh) for each of its items i, p(i) the
  last position of i in S and p* that of S's most recent item that the prefix also holds.
- Candidates as `sknn`: the `sample_size` (5000) most recent sessions sharing an item; k = 100 neighbours
  (ties: the more recent session). A λ of 0 switches its decay off (session-rec: None). `remind=False`
  leaves out the prefix's own items.

Defaults: session-rec's (λ_spw 1.02, λ_snh 5 days, λ_inh 2.05, 5000 candidates), k = 100 as in its
configurations. The session time decay needs session times: on data without them (SR-GNN's preprocessed
splits) it is off, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import space
from .baselines import training_clicks
from .registry import BaselineSpec
from .vsknn import PrefixVectorKNN, prefix_items

DAY = 24 * 3600.0


class STAN(PrefixVectorKNN):
    def __init__(self, n_items: int, k: int = 100, sample_size: int = 5000, lambda_spw: float = 1.02,
                 lambda_snh: float = 5.0, lambda_inh: float = 2.05, remind: bool = True):
        super().__init__(n_items, k, sample_size)
        if min(lambda_spw, lambda_snh, lambda_inh) < 0:
            raise ValueError("stan's decays lambda_spw, lambda_snh, lambda_inh must be >= 0 (0: off)")
        self.lambda_spw, self.lambda_snh, self.lambda_inh, self.remind = lambda_spw, lambda_snh, lambda_inh, remind

    def fit(self, train):
        super().fit(train)
        times = train.sessions.end_time
        self.time_decay = bool(self.lambda_snh) and times is not None
        if self.lambda_snh and times is None:
            warnings.warn("stan: the training sessions have no times (e.g. SR-GNN's preprocessed splits); the "
                          "session time decay (lambda_snh) is off", stacklevel=2)
        # exp((t_S - latest) / λ): the decay up to a factor common to all candidates (see the docstring).
        self.time_weight = (np.exp((times[self.recency_order] - times.max()) / (self.lambda_snh * DAY))
                            if self.time_decay else np.ones(len(self.recency_order)))
        return self

    def neighbours(self, batch):
        """Top-k neighbours per example: (example, session row, similarity, p* of the session, and how many
        clicks before the prefix's end its last item shared with the session lies)."""
        self._check_fitted()
        example, item, position, length = prefix_items(batch)
        weight = np.exp((position - length) / self.lambda_spw) if self.lambda_spw else np.ones(len(item))
        row, sess = self.candidates(batch, example, item)
        pair, at, found = self.shared(row, sess, example, item, batch.num_graphs)
        overlap = np.bincount(pair, weights=weight[at], minlength=len(row))
        norm = np.sqrt(np.bincount(example, weights=weight * weight, minlength=batch.num_graphs))
        sim = overlap / (norm[row] * np.sqrt(self.session_size[sess])) * self.time_weight[sess]
        anchor, latest = np.zeros(len(row), dtype=np.int64), np.zeros(len(row), dtype=np.int64)
        np.maximum.at(anchor, pair, self.last_position[found])
        np.maximum.at(latest, pair, position[at])
        return self.top_k(batch.num_graphs, row, sess, sim, anchor, length[np.searchsorted(example, row)] - latest)

    def candidate_scores(self, batch):
        row, sess, sim, anchor, gap = self.neighbours(batch)
        # Every item of every neighbour: its slice of the (session, item) keys, which are sorted by session.
        size = self.n_items + 1
        begin = np.searchsorted(self.session_item_keys, sess * size)
        count = np.searchsorted(self.session_item_keys, (sess + 1) * size) - begin
        vote = np.repeat(np.arange(len(row)), count)
        at = np.repeat(begin, count) + np.arange(len(vote)) - np.repeat(np.cumsum(count) - count, count)
        item = self.session_item_keys[at] % size
        value = sim[vote]
        if self.lambda_inh:
            value = value * np.exp(-np.abs(self.last_position[at] - anchor[vote]) / self.lambda_inh)
        value = self.adjust(value, item, gap[vote])
        scores = sp.csr_matrix((value, (row[vote], item)), shape=(batch.num_graphs, size))
        scores.sum_duplicates()
        return scores if self.remind else self.without_prefix_items(scores, batch)

    def adjust(self, value, item, gap):
        """Further decays of a vote for `item` (V-STAN's); `gap`: clicks between the prefix's end and its
        last item shared with the voting session."""
        return value


class VSTAN(STAN):
    """V-STAN (Ludewig et al. 2021; session-rec `algorithms/knn/vstan.py`): STAN whose votes also decay with
    how far back the prefix's last shared item lies, exp(-gap / λ_ipw), and grow with the voted item's
    inverse document frequency, times (1 + λ_idf log(sessions / clicks of the item)). session-rec's
    `similarity` option is not used by its own code (always cosine), nor here."""

    def __init__(self, n_items: int, k: int = 100, sample_size: int = 5000, lambda_spw: float = 1.02,
                 lambda_snh: float = 5.0, lambda_inh: float = 2.05, lambda_ipw: float = 1.02, lambda_idf: float = 5.0,
                 remind: bool = True):
        super().__init__(n_items, k, sample_size, lambda_spw, lambda_snh, lambda_inh, remind)
        if min(lambda_ipw, lambda_idf) < 0:
            raise ValueError("vstan's lambda_ipw and lambda_idf must be >= 0 (0: off)")
        self.lambda_ipw, self.lambda_idf = lambda_ipw, lambda_idf

    def fit(self, train):
        super().fit(train)
        clicks = np.bincount(training_clicks(train, self.n_items), minlength=self.n_items + 1).astype(np.float64)
        # (items never clicked in training never get a vote: their 0 is never used)
        self.idf = np.where(clicks > 0, np.log(len(train.sessions) / np.maximum(clicks, 1)), 0.0)
        return self

    def adjust(self, value, item, gap):
        if self.lambda_ipw:
            value = value * np.exp(-gap / self.lambda_ipw)
        if self.lambda_idf:
            value = value * (1.0 + self.lambda_idf * self.idf[item])
        return value


@dataclass(frozen=True)
class STANConfig:
    """session-rec's STAN defaults (k = 100 as in its configurations); a λ of 0 turns that decay off."""

    k: int = 100
    sample_size: int = 5000
    lambda_spw: float = 1.02
    lambda_snh: float = 5.0
    lambda_inh: float = 2.05
    remind: bool = True


@dataclass(frozen=True)
class VSTANConfig(STANConfig):
    """session-rec's VSTAN defaults: STAN's, with λ_ipw 1.02 and λ_idf 5."""

    lambda_ipw: float = 1.02
    lambda_idf: float = 5.0


# session-rec's tuning ranges (its conf/ `params_opt`), the decays as ranges over its grids' spans.
DECAY = space.Float(1e-5, 7.24, log=True)
SPACE = {"k": space.Choice((100, 200, 500, 1000, 1500, 2000)), "sample_size": space.Choice((1000, 2500, 5000, 10000)),
         "lambda_spw": DECAY, "lambda_snh": space.Float(2.5, 100.0, log=True), "lambda_inh": DECAY}

SPECS = {
    "stan": BaselineSpec(
        build=lambda n_items, cfg: STAN(n_items, cfg["k"], cfg["sample_size"], cfg["lambda_spw"], cfg["lambda_snh"],
                                        cfg["lambda_inh"], cfg["remind"]),
        defaults=STANConfig(),
        space=SPACE,
        doc="STAN (SIGIR'19): session kNN with prefix-position, session-time and neighbour-position decays",
    ),
    "vstan": BaselineSpec(
        build=lambda n_items, cfg: VSTAN(n_items, cfg["k"], cfg["sample_size"], cfg["lambda_spw"], cfg["lambda_snh"],
                                         cfg["lambda_inh"], cfg["lambda_ipw"], cfg["lambda_idf"], cfg["remind"]),
        defaults=VSTANConfig(),
        space=dict(SPACE, lambda_ipw=DECAY, lambda_idf=space.Float(0.0, 10.0)),
        doc="V-STAN: STAN with V-SKNN's vote decay by the last shared prefix item and idf-weighted votes",
    ),
}
