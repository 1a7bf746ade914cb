"""SF-SKNN (Ludewig & Jannach 2018, "sequence and filtered" session kNN; session-rec's earlier
`SeqFilterContextKNN`): `sknn`'s neighbours and votes, but an item can only be recommended if, somewhere in
the training sessions, it was clicked directly after the prefix's last item.

Defaults of that class: cosine similarity, the 1000 most recent candidate sessions, k = 100 (as in its
configurations). Its `remind` boost of the prefix's last 3 items and `pop_boost` (both off by default)
are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import space
from .baselines import SessionKNN, clicks_in_order
from .registry import BaselineSpec


class SequenceFilterKNN(SessionKNN):
    def fit(self, train):
        super().fit(train)
        items, _, index = clicks_in_order(train, self.n_items)
        follows = index[1:] > 0  # click j follows click j - 1 in the same session
        before, after = items[:-1][follows], items[1:][follows]
        size = self.n_items + 1
        self.followed_by = sp.csr_matrix((np.ones(len(before)), (before, after)), shape=(size, size))
        self.followed_by.data[:] = 1.0
        return self

    def candidate_scores(self, batch):
        last = batch.x[batch.alias[batch.last]].cpu().numpy()
        return super().candidate_scores(batch).multiply(self.followed_by[last])


@dataclass(frozen=True)
class SFSKNNConfig:
    """SeqFilterContextKNN's defaults: the 100 most similar (cosine) of the 1000 most recent candidates."""

    k: int = 100
    sample_size: int = 1000
    similarity: str = "cosine"


SPECS = {
    "sfsknn": BaselineSpec(
        build=lambda n_items, cfg: SequenceFilterKNN(n_items, cfg["k"], cfg["sample_size"], cfg["similarity"]),
        defaults=SFSKNNConfig(),
        space={"k": space.Choice((50, 100, 500, 1000, 1500)), "sample_size": space.Choice((500, 1000, 2500, 5000, 10000)),
               "similarity": space.Choice(SequenceFilterKNN.SIMILARITIES)},
        doc="SF-SKNN: session kNN recommending only items that directly followed the last click in training",
    ),
}
