"""Rule anchors of session-rec (rn5l/session-rec `algorithms/baselines/sr.py`, `ar.py`; Ludewig & Jannach
2018): scores for the next item from rules mined over the training sessions, looked up by the last click.

- `sr` (sequential rules, Kamehkhosh et al. 2017): for every click b of a session and each of the `steps`
  clicks a before it, at distance i, rule a -> b gains weight w(i) (`weighting`: div 1/i, linear 1 - 0.1 i,
  same 1, log 1/log10(i + 1.7), quadratic 1/i^2). Defaults of session-rec: steps 10, div, pruning 20.
- `ar` (association rules): every ordered pair of clicks of a session, in both directions, weight 1.
- `pruning` N > 0 keeps each item's N strongest rules (session-rec's `Counter.most_common`: ties go to the
  rule first seen in the training data, here in the split's session order); 0 keeps all.
- The score of item b is the weight of rule (last click -> b); items without a rule score 0 (ties, which
  the evaluator breaks uniformly in expectation). session-rec divides by the maximum: the same ranking.
  Its fractional pruning (0 < pruning < 1) and `last_in_session`, `idf_weight`, `last_n_days` options
  are not implemented.

Rules are a sparse [n_items + 1, n_items + 1] matrix; a batch's scores are the rows of its last clicks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..data.sessions import Split
from . import space
from .baselines import CandidateBaseline, clicks_in_order
from .registry import BaselineSpec

WEIGHTINGS = {
    "div": lambda i: 1.0 / i,
    "linear": lambda i: 1.0 - 0.1 * i if i <= 100 else 0.0,
    "same": lambda i: 1.0,
    "log": lambda i: 1.0 / math.log10(i + 1.7),
    "quadratic": lambda i: 1.0 / (i * i),
}


def _prune(source, target, weight, first_seen, n_items: int, keep: int) -> sp.csr_matrix:
    """Sum duplicate rules, keep each source's `keep` strongest (ties: first seen), as a CSR matrix."""
    size = n_items + 1
    key = source * size + target
    order = np.lexsort((first_seen, key))  # per rule, its first occurrence first
    key, first_seen = key[order], first_seen[order]
    unique, start = np.unique(key, return_index=True)
    total = np.add.reduceat(weight[order], start) if len(key) else np.zeros(0)
    source, target, seen = unique // size, unique % size, first_seen[start]
    if keep > 0:
        rank = np.lexsort((seen, -total, source))
        source, target, total, seen = source[rank], target[rank], total[rank], seen[rank]
        counts = np.bincount(source, minlength=size)
        ptr = np.concatenate([[0], np.cumsum(counts)])
        position = np.arange(len(source)) - ptr[source]
        mask = position < keep
        source, target, total = source[mask], target[mask], total[mask]
    rules = sp.csr_matrix((total, (source, target)), shape=(size, size))
    rules.sum_duplicates()
    return rules


class RuleModel(CandidateBaseline):
    """Scores = the rules of the prefix's last click (see the module docstring)."""

    rules: sp.csr_matrix

    def candidate_scores(self, batch):
        self._check_fitted()
        last = batch.x[batch.alias[batch.last]].cpu().numpy()
        return self.rules[last]


class SequentialRules(RuleModel):
    def __init__(self, n_items: int, steps: int = 10, weighting: str = "div", pruning: int = 20):
        super().__init__(n_items)
        if steps < 1 or pruning < 0:
            raise ValueError(f"sr needs steps >= 1 and pruning >= 0 (0 = keep all), got {steps}, {pruning}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"sr weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        self.steps, self.weighting, self.pruning = int(steps), weighting, int(pruning)

    def fit(self, train: Split) -> "SequentialRules":
        items, _, index = clicks_in_order(train, self.n_items)
        parts = []
        for i in range(1, self.steps + 1):  # rule (click j - i) -> (click j), seen at (j, i) in the scan
            at = np.nonzero(index >= i)[0]
            parts.append((items[at - i], items[at], np.full(len(at), WEIGHTINGS[self.weighting](i)),
                          at * self.steps + (i - 1)))
        source, target, weight, seen = (np.concatenate(p) for p in zip(*parts))
        self.rules = _prune(source, target, weight, seen, self.n_items, self.pruning)
        self.fitted = True
        return self


class AssociationRules(RuleModel):
    def __init__(self, n_items: int, pruning: int = 20):
        super().__init__(n_items)
        if pruning < 0:
            raise ValueError(f"ar needs pruning >= 0 (0 = keep all), got {pruning}")
        self.pruning = int(pruning)

    def fit(self, train: Split) -> "AssociationRules":
        items, starts, index = clicks_in_order(train, self.n_items)
        later = np.repeat(np.arange(len(items)), index)  # click j paired with every earlier click k
        earlier = starts[later] + (np.arange(len(later)) - np.repeat(np.cumsum(index) - index, index))
        # session-rec creates rule (k -> j) then (j -> k) when it reaches click j, in the order of k.
        seen = (later * (index.max(initial=0) + 1) + index[earlier]) * 2
        source = np.concatenate([items[earlier], items[later]])
        target = np.concatenate([items[later], items[earlier]])
        self.rules = _prune(source, target, np.ones(len(source)), np.concatenate([seen, seen + 1]), self.n_items,
                            self.pruning)
        self.fitted = True
        return self


@dataclass(frozen=True)
class SRConfig:
    """session-rec's SequentialRules defaults: 10 steps back, 1/i weights, the 20 strongest rules per item."""

    steps: int = 10
    weighting: str = "div"
    pruning: int = 20


@dataclass(frozen=True)
class ARConfig:
    """session-rec's AssociationRules default: the 20 strongest rules per item."""

    pruning: int = 20


SPECS = {
    "sr": BaselineSpec(
        build=lambda n_items, cfg: SequentialRules(n_items, cfg["steps"], cfg["weighting"], cfg["pruning"]),
        defaults=SRConfig(),
        # session-rec's tuning ranges (its conf/ `params_opt`) for steps and weighting.
        space={"steps": space.Int(1, 20), "weighting": space.Choice(tuple(WEIGHTINGS)),
               "pruning": space.Choice((0, 10, 20, 50))},
        doc="sequential rules (session-rec SR): rules a -> b for b up to 10 clicks after a, weights 1/distance",
    ),
    "ar": BaselineSpec(
        build=lambda n_items, cfg: AssociationRules(n_items, cfg["pruning"]),
        defaults=ARConfig(),
        space={"pruning": space.Choice((0, 10, 20, 50))},
        doc="association rules (session-rec AR): co-occurrence of two clicks in a training session",
    ),
}
