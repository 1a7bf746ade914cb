"""`oracle`: the Bayes-optimal next-item ranking on the built-in synthetic data (the attainable ceiling).

The synthetic generator (`sbr_bench.data.synthetic`) is known, so the best possible prediction from a
prefix x_1..x_t is its predictive distribution under that very process:

- intent S (a set of 1-3 concepts): K ~ U{1,2,3} draws from the concept weights w, duplicates merged, so
  P(S) = 1/3 Σ_K P(K draws cover exactly S), by inclusion-exclusion Σ_{T ⊆ S} (-1)^{|S|-|T|} w(T)^K;
- current concept c, a hidden Markov chain on S: initially uniform on S; each click is off-intent with
  probability `noise` (an item by global popularity g, c unchanged), else c moves to c' with
  T(c, c') = stickiness·[c = c'] + (1 - stickiness)/|S| and the item is drawn by c''s within-concept
  popularity e.

The forward filter gives P(S, c | prefix) exactly, for every S at once (all |S| <= 3 subsets are
enumerated), and

    P(next = y | prefix) = noise·g(y) + (1 - noise)·e(y)·Q(concept(y)),
    Q(k) = Σ_S Σ_c P(S, c | prefix) T_S(c, k).

Ranking by it maximises the expected HR@K and MRR@K of every example, for every K. Scores are these
probabilities (float64). `fit(split)` uses no training data at all: it rebuilds the generator from the
dataset's size and seed (cfg `synthetic_size`, `synthetic_seed`, filled in by `sbr-bench run` from the
dataset's meta) and checks that the split is that dataset's.

One approximation, stated: `synthetic_dataset` removes test clicks on items never clicked in training
(`SyntheticTruth.dropped_test_clicks`: 0 on micro/tiny/small seed 0, about 0.1% on small seed 1); the
oracle treats the kept prefix as if it had been generated without those gaps. Candidates are the
dataset's items (a generator item that never reached the catalogue is no candidate).
Enumeration cost grows as C³/6 intent sets for C concepts: sizes up to `small` (20 concepts, 1350 sets)
score in seconds; `medium` and `diginetica` are refused with a clear error (and left out of `all`).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from itertools import combinations

import numpy as np
import torch
from torch import Tensor, nn

from ..data.sessions import Split
from ..errors import ConfigError
from .registry import BaselineSpec

MAX_SETS = 20_000  # intent sets enumerated at most (C = 48 concepts); beyond, scoring gets slow
NOT_SYNTHETIC = ("the oracle knows only the built-in synthetic generator: use the dataset synthetic[:SIZE] "
                 "(it has no meaning on other data)")


def intent_sets(weights: np.ndarray, max_size: int = 3):
    """Every possible intent (concept set) with its prior probability.

    Args:
        weights: [C] concept weights of one intent draw (summing to 1).
        max_size: the most draws of an intent (the generator draws K ~ U{1..max_size}).
    Returns:
        (sets [n, max_size] int64 concept ids padded with -1, size [n] int64, prior [n] float64); the
        priors sum to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    sets, sizes, prior = [], [], []
    for m in range(1, max_size + 1):
        for s in combinations(range(len(w)), m):
            # P(K iid draws hit exactly the set s), by inclusion-exclusion over its subsets.
            p = 0.0
            for K in range(1, max_size + 1):
                for j in range(1, m + 1):
                    for t in combinations(s, j):
                        p += (-1) ** (m - j) * float(w[list(t)].sum()) ** K
            sets.append(list(s) + [-1] * (max_size - m))
            sizes.append(m)
            prior.append(p / max_size)
    return np.array(sets, dtype=np.int64), np.array(sizes, dtype=np.int64), np.array(prior)


def n_intent_sets(size: str) -> int:
    """How many intent sets the oracle enumerates on synthetic data of `size`."""
    from ..data.synthetic import SIZES

    return sum(math.comb(SIZES[size][1], m) for m in (1, 2, 3))


def oracle_available(dataset) -> bool:
    """Whether the oracle can score `dataset`: built-in synthetic data of a size it enumerates."""
    from ..data.synthetic import is_synthetic

    return is_synthetic(dataset) and n_intent_sets(dataset.meta["size"]) <= MAX_SETS


class SyntheticOracle(nn.Module):
    """Exact posterior predictive of the synthetic generator (see the module doc)."""

    trainable = False

    def __init__(self, n_items: int, size: str, seed: int):
        super().__init__()
        from ..data.synthetic import SIZES

        if size not in SIZES:
            raise ValueError(NOT_SYNTHETIC if not size else
                             f"unknown synthetic size '{size}'; choose one of {', '.join(SIZES)}")
        n_concepts, n_sets = SIZES[size][1], n_intent_sets(size)
        if n_sets > MAX_SETS:
            raise ValueError(f"synthetic:{size} has {n_concepts} concepts ({n_sets} intent sets); the exact "
                             f"oracle enumerates them all and supports at most {MAX_SETS} (sizes up to small)")
        self.n_items, self.size, self.seed = int(n_items), size, int(seed)
        self.fitted = False

    def fit(self, train: Split) -> "SyntheticOracle":
        """Rebuild the generator's truth. The training data are NOT used for estimation: they only serve
        to check that this is the dataset `synthetic:SIZE` with this seed."""
        from ..data.synthetic import synthetic_truth

        truth = synthetic_truth(self.size, self.seed)
        head = train.sessions[0].tolist() if len(train.sessions) else []
        if len(truth.ids) != self.n_items or head != truth.train_head[: len(head)] or not head:
            raise ConfigError("models", f"oracle: the data are not synthetic:{self.size} with seed {self.seed} "
                              "(cfg synthetic_size/synthetic_seed must name the dataset being evaluated)")
        return self.use_truth(truth)

    def use_truth(self, truth) -> "SyntheticOracle":
        """Score under the process of `truth` (a `SyntheticTruth`: process + item renumbering)."""
        self.truth = truth
        proc = truth.process
        self.noise, self.stick = proc.noise, proc.stickiness
        self.concept, self.within, self.glob = truth.item_arrays(self.n_items)
        self.sets, self.set_size, self.prior = intent_sets(proc.concept_weight)
        n_sets, C = len(self.sets), proc.n_concepts
        # slot_of[S, k] = position of concept k in set S, or -1: the emission mask of a click of concept k.
        self.slot_of = np.full((n_sets, C), -1, dtype=np.int64)
        for slot in range(self.sets.shape[1]):
            ok = self.sets[:, slot] >= 0
            self.slot_of[np.flatnonzero(ok), self.sets[ok, slot]] = slot
        self.onehot = [np.zeros((n_sets, C)) for _ in range(self.sets.shape[1])]  # slot -> [S, C] indicator
        for slot, oh in enumerate(self.onehot):
            ok = self.sets[:, slot] >= 0
            oh[np.flatnonzero(ok), self.sets[ok, slot]] = 1.0
        self.fitted = True
        return self

    def posterior(self, prefixes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The filter: P(S, current concept slot | prefix) per example.

        Args:
            prefixes: [B, L] dataset item ids (1..n_items), padded after each prefix's end.
            lengths: [B] prefix lengths.
        Returns:
            [B, n_sets, 3] float64, each example's entries summing to 1.
        """
        valid = self.sets >= 0  # [S, 3]
        inv = 1.0 / self.set_size[:, None]
        alpha = np.broadcast_to(self.prior[:, None] * inv * valid, (len(prefixes),) + valid.shape).copy()
        for t in range(prefixes.shape[1]):
            live = np.flatnonzero(lengths > t)
            if not len(live):
                break
            item = prefixes[live, t] - 1
            k, e, g = self.concept[item], self.within[item], self.glob[item]
            a = alpha[live]
            # P(click, new slot | old slot) summed over the old slot: noise keeps the slot; an on-intent
            # click moves to the click's concept's slot (if in S) with stickiness·α + (1 - stickiness)/|S|·Σα.
            moved = self.stick * a + (1.0 - self.stick) * inv[None] * a.sum(-1, keepdims=True)
            slot = self.slot_of[:, k].T  # [b, S]
            hit = (np.arange(3)[None, None, :] == slot[:, :, None])
            new = self.noise * g[:, None, None] * a + (1.0 - self.noise) * e[:, None, None] * moved * hit
            alpha[live] = new / new.sum(axis=(1, 2), keepdims=True)  # normalised: no underflow
        return alpha

    def next_concept(self, alpha: np.ndarray) -> np.ndarray:
        """Q [B, C]: probability that the next on-intent click is of each concept."""
        inv = 1.0 / self.set_size[None, :, None]
        to_slot = self.stick * alpha + (1.0 - self.stick) * inv * alpha.sum(-1, keepdims=True) * (self.sets >= 0)
        return sum(to_slot[:, :, s] @ oh for s, oh in enumerate(self.onehot))

    def predictive(self, prefixes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """P(next item | prefix) over dataset items 1..n_items, [B, n_items] float64 (sums to the
        catalogue's share of the generator's mass, <= 1)."""
        q = self.next_concept(self.posterior(prefixes, lengths))
        on = np.where(self.concept >= 0, q[:, np.maximum(self.concept, 0)], 0.0)
        return self.noise * self.glob[None, :] + (1.0 - self.noise) * self.within[None, :] * on

    def forward(self, batch) -> Tensor:
        if not self.fitted:
            raise RuntimeError("SyntheticOracle: call fit(train_split) before scoring")
        items = batch.x[batch.alias].cpu().numpy()
        lengths = batch.length.cpu().numpy()
        ptr = np.concatenate([[0], np.cumsum(lengths)])
        prefixes = np.zeros((len(lengths), int(lengths.max(initial=1))), dtype=np.int64)
        col = np.arange(len(items)) - np.repeat(ptr[:-1], lengths)
        prefixes[np.repeat(np.arange(len(lengths)), lengths), col] = items
        return torch.from_numpy(self.predictive(prefixes, lengths)).to(batch.x.device)


@dataclass(frozen=True)
class OracleConfig:
    """Which synthetic dataset the oracle rebuilds (set by the run from the dataset itself)."""

    synthetic_size: str = ""
    synthetic_seed: int = 0


SPECS = {
    "oracle": BaselineSpec(
        build=lambda n_items, cfg: SyntheticOracle(n_items, cfg["synthetic_size"], cfg["synthetic_seed"]),
        defaults=OracleConfig(),
        doc="synthetic data only: Bayes-optimal next-item ranking under the generator (the attainable ceiling)",
    ),
}
