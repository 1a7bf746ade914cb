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

from dataclasses import dataclass

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


@dataclass
class SyntheticProcess:
    """The generator's latent structure (what the oracle conditions on), in generator item ids 1..n_items.

    Attributes:
        concept_items: per concept, its item ids (most popular first).
        concept_pop: per concept, the within-concept click distribution over `concept_items`.
        concept_weight: [C] prior weight of each concept in an intent draw.
        global_items, global_pop: the off-intent (noise) click distribution over all items.
        noise: probability that a click is a global-popularity item (concept state unchanged).
        stickiness: probability that an on-intent click keeps the previous concept.
    """

    concept_items: list
    concept_pop: list
    concept_weight: np.ndarray
    global_items: np.ndarray
    global_pop: np.ndarray
    noise: float
    stickiness: float

    @property
    def n_concepts(self) -> int:
        return len(self.concept_items)


def make_process(n_items, n_concepts, rng, noise=0.1, stickiness=0.3) -> SyntheticProcess:
    """The concepts and popularities of a generator (draws the item permutation from `rng`)."""
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
    return SyntheticProcess(concept_items, concept_pop, concept_weight, global_items, global_pop,
                            float(noise), float(stickiness))


def generate_sessions(n_items, n_concepts, n_sessions, mean_length, seed=0, noise=0.1, stickiness=0.3,
                      max_length=20, truth=False):
    """Sessions of generator item ids (lists), deterministic by seed.

    Args:
        truth: also return what generated them: (seqs, process, intents, concepts), where intents[s] is
            session s's intent (concept ids, in draw order) and concepts[s][t] the concept whose item click
            t is, or -1 for an off-intent (noise) click. Recording it draws nothing extra: the sessions
            are the same either way.
    Returns:
        The list of sessions, or the tuple above.
    """
    rng = np.random.default_rng(seed)
    proc = make_process(n_items, n_concepts, rng, noise, stickiness)
    concept_items, global_items = proc.concept_items, proc.global_items

    lengths = np.clip(rng.geometric(1.0 / (mean_length - 1), n_sessions) + 1, 2, max_length)
    # Sampling by inverse CDF (searchsorted) keeps Diginetica-sized generation to seconds.
    concept_cdf = [np.cumsum(p) for p in proc.concept_pop]
    global_cdf = np.cumsum(proc.global_pop)
    weight_cdf = np.cumsum(proc.concept_weight)

    def draw(cdf):
        return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)

    seqs, intents, concepts = [], [], []
    for n in lengths:
        intent = list(dict.fromkeys(draw(weight_cdf) for _ in range(rng.integers(1, 4))))
        seq, which, concept = [], [], intent[rng.integers(len(intent))]
        for _ in range(n):
            if rng.random() < noise:
                seq.append(int(global_items[draw(global_cdf)]))
                which.append(-1)
                continue
            if rng.random() >= stickiness:
                concept = intent[rng.integers(len(intent))]
            items = concept_items[concept]
            seq.append(int(items[draw(concept_cdf[concept])]))
            which.append(concept)
        seqs.append(seq)
        intents.append(intent)
        concepts.append(which)
    return (seqs, proc, intents, concepts) if truth else seqs


def _split(seqs, test_fraction):
    """The dataset's view of generated sessions: (item renumbering {generator id: dataset id} by first
    appearance in train, train sessions, indices of the test sessions kept, their kept click positions)."""
    n_test = int(len(seqs) * test_fraction)
    train_seqs, test_seqs = seqs[: len(seqs) - n_test], seqs[len(seqs) - n_test :]
    ids = {}
    for s in train_seqs:
        for i in s:
            ids.setdefault(i, len(ids) + 1)
    kept = []
    for k, s in enumerate(test_seqs):
        where = [t for t, i in enumerate(s) if i in ids]
        if len(where) >= 2:
            kept.append((len(train_seqs) + k, where))
    return ids, train_seqs, kept


@dataclass
class SyntheticTruth:
    """What generated a synthetic dataset, in the dataset's item ids (see `synthetic_truth`).

    Attributes:
        process: the generator's process (generator item ids).
        ids: generator item id -> dataset item id (items never clicked in train have none).
        test_intents: per dataset test session, its intent (concept ids).
        test_concepts: per dataset test session, the concept of each kept click (-1: noise click).
        dropped_test_clicks: share of generated test-session clicks on items unseen in train (removed).
        train_head: the first training session in dataset ids (to recognise the dataset).
    """

    process: SyntheticProcess
    ids: dict
    test_intents: list
    test_concepts: list
    dropped_test_clicks: float
    train_head: list

    def item_arrays(self, n_items: int):
        """Per dataset item 1..n_items: (concept [n_items] int64, within-concept probability, global
        probability), as float64 arrays indexed by dataset id - 1."""
        proc = self.process
        concept = np.full(n_items, -1, dtype=np.int64)
        within, glob = np.zeros(n_items), np.zeros(n_items)
        gpop = dict(zip(proc.global_items.tolist(), proc.global_pop.tolist()))
        for c, (items, pop) in enumerate(zip(proc.concept_items, proc.concept_pop)):
            for i, p in zip(items.tolist(), pop.tolist()):
                j = self.ids.get(i)
                if j is not None and j <= n_items:
                    concept[j - 1], within[j - 1], glob[j - 1] = c, p, gpop[i]
        return concept, within, glob


def synthetic_truth(size="small", seed=0, test_fraction=0.2) -> SyntheticTruth:
    """Regenerate the built-in synthetic dataset `size`/`seed` with its truth (deterministic; seconds)."""
    n_items, n_concepts, n_sessions, mean_len = _size(size)
    seqs, proc, intents, concepts = generate_sessions(n_items, n_concepts, n_sessions, mean_len, seed=seed,
                                                      truth=True)
    ids, train_seqs, kept = _split(seqs, test_fraction)
    test_clicks = sum(len(s) for s in seqs[len(train_seqs):])
    unseen = sum(1 for s in seqs[len(train_seqs):] for i in s if i not in ids)
    return SyntheticTruth(proc, ids, [intents[k] for k, _ in kept],
                          [[concepts[k][t] for t in where] for k, where in kept],
                          unseen / max(test_clicks, 1), [ids[i] for i in train_seqs[0]])


def _size(size):
    if size not in SIZES:
        from ..errors import UserError

        raise UserError(f"synthetic size '{size}' unknown; choose one of {', '.join(SIZES)}")
    return SIZES[size]


def synthetic_dataset(size="small", seed=0, valid_fraction=0.1, test_fraction=0.2):
    n_items, n_concepts, n_sessions, mean_len = _size(size)
    seqs = generate_sessions(n_items, n_concepts, n_sessions, mean_len, seed=seed)
    end_time = np.arange(len(seqs), dtype=np.float64) * 60.0
    # Renumber items 1..N by first appearance in train (as the published protocols do) and drop
    # test items never seen in train; keep test sessions that still have >= 2 clicks.
    ids, train_seqs, kept = _split(seqs, test_fraction)
    train = [[ids[i] for i in s] for s in train_seqs]
    test = [[ids[seqs[k][t]] for t in where] for k, where in kept]
    test_time = [end_time[k] for k, _ in kept]
    meta = {"source": "synthetic", "size": size, "seed": seed, "protocol": "synthetic"}
    return make_dataset(
        f"synthetic-{size}" if size != "small" else "synthetic", len(ids),
        Sessions.from_lists(train, end_time[: len(train_seqs)]), Sessions.from_lists(test, test_time),
        valid_fraction=valid_fraction, meta=meta,
    )


def is_synthetic(dataset) -> bool:
    """Whether `dataset` is a built-in synthetic one (its generator, hence its truth, is known)."""
    meta = getattr(dataset, "meta", None) or {}
    return meta.get("source") == "synthetic" and meta.get("size") in SIZES
