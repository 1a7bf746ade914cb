"""The built-in synthetic dataset (the default): latent structure that rewards multi-level intent.

Generative story, deterministic by seed:
- items belong to concepts; within a concept, popularity is power-law (Zipf), and concepts themselves
  have power-law sizes;
- each session has an *intent*: a small set of concepts (1-3). Every click picks a concept from the intent
  (sticky: it repeats the previous concept with probability `stickiness`), then an item of that concept by
  popularity; with probability `noise` the click is a random popular item instead (off-intent);
- sessions follow each other in time (end times one minute apart); the latest 20% are the test part.

The last item alone says little about which *other* concepts of the intent are coming; the last few
items together reveal the intent. So readouts that look at groups of recent items (Atten-Mixer's levels)
should beat last-item-only ones, and everything should beat popularity.
"""

from __future__ import annotations

import numpy as np

from .sessions import Sessions, make_dataset

SIZES = {
    # name: (items, concepts, sessions, mean session length)
    "micro": (60, 6, 300, 5.0),  # for end-to-end tests of commands
    "tiny": (200, 12, 1_500, 5.0),
    "small": (500, 20, 3_000, 5.0),  # the default: `run --models all` in minutes on 2 CPU cores
    "medium": (5_000, 150, 40_000, 5.0),
    "diginetica": (43_000, 1_000, 205_000, 4.8),
}


def generate_sessions(n_items, n_concepts, n_sessions, mean_length, seed=0, noise=0.1, stickiness=0.3,
                      max_length=20):
    rng = np.random.default_rng(seed)
    # Concept sizes ~ power law; each concept gets at least one item.
    weights = 1.0 / np.arange(1, n_concepts + 1) ** 0.8
    sizes = np.maximum(1, np.floor(weights / weights.sum() * (n_items - n_concepts)).astype(int) + 1)
    sizes[0] += n_items - sizes.sum()
    perm = rng.permutation(n_items) + 1  # item ids 1..n_items, shuffled across concepts
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    concept_items = [perm[bounds[c] : bounds[c + 1]] for c in range(n_concepts)]
    concept_pop = [1.0 / np.arange(1, len(it) + 1) ** 1.1 for it in concept_items]
    concept_pop = [p / p.sum() for p in concept_pop]
    concept_weight = weights / weights.sum()
    global_pop = np.concatenate([cp * concept_weight[c] for c, cp in enumerate(concept_pop)])
    global_items = np.concatenate(concept_items)
    global_pop /= global_pop.sum()

    lengths = np.clip(rng.geometric(1.0 / (mean_length - 1), n_sessions) + 1, 2, max_length)
    # Sampling by inverse CDF (searchsorted) keeps Diginetica-sized generation to seconds.
    concept_cdf = [np.cumsum(p) for p in concept_pop]
    global_cdf = np.cumsum(global_pop)
    weight_cdf = np.cumsum(concept_weight)

    def draw(cdf):
        return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)

    seqs = []
    for n in lengths:
        intent = list(dict.fromkeys(draw(weight_cdf) for _ in range(rng.integers(1, 4))))
        seq, concept = [], intent[rng.integers(len(intent))]
        for _ in range(n):
            if rng.random() < noise:
                seq.append(int(global_items[draw(global_cdf)]))
                continue
            if rng.random() >= stickiness:
                concept = intent[rng.integers(len(intent))]
            items = concept_items[concept]
            seq.append(int(items[draw(concept_cdf[concept])]))
        seqs.append(seq)
    return seqs


def synthetic_dataset(size="small", seed=0, valid_fraction=0.1, test_fraction=0.2):
    if size not in SIZES:
        from ..errors import UserError

        raise UserError(f"synthetic size '{size}' unknown; choose one of {', '.join(SIZES)}")
    n_items, n_concepts, n_sessions, mean_len = SIZES[size]
    seqs = generate_sessions(n_items, n_concepts, n_sessions, mean_len, seed=seed)
    end_time = np.arange(len(seqs), dtype=np.float64) * 60.0
    n_test = int(len(seqs) * test_fraction)
    # Renumber items 1..N by first appearance in train (as the published protocols do) and drop
    # test items never seen in train; keep test sessions that still have >= 2 clicks.
    train_seqs, test_seqs = seqs[: len(seqs) - n_test], seqs[len(seqs) - n_test :]
    ids = {}
    for s in train_seqs:
        for i in s:
            ids.setdefault(i, len(ids) + 1)
    train = [[ids[i] for i in s] for s in train_seqs]
    test, test_time = [], []
    for s, t in zip(test_seqs, end_time[len(train_seqs) :]):
        kept = [ids[i] for i in s if i in ids]
        if len(kept) >= 2:
            test.append(kept)
            test_time.append(t)
    meta = {"source": "synthetic", "size": size, "seed": seed, "protocol": "synthetic"}
    return make_dataset(
        f"synthetic-{size}" if size != "small" else "synthetic", len(ids),
        Sessions.from_lists(train, end_time[: len(train_seqs)]), Sessions.from_lists(test, test_time),
        valid_fraction=valid_fraction, meta=meta,
    )
