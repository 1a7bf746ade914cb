import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import SessionDataset, Sessions, Split
from sbr_bench.evaluate import audit_order_invariance, evaluate
from sbr_bench.models.baselines import Popularity, SessionKNN, SessionPopularity
from sbr_bench.models.registry import build_model
from test_evaluate import assert_sparse_path_exact, sparse_cases


def toy_dataset() -> SessionDataset:
    """7 items. Items 6 and 7 appear only in valid/test, so a fit that peeks there would score them."""
    train = Sessions.from_lists([[1, 1, 1, 2], [2, 3], [3, 2, 4], [5, 1]], end_time=[10.0, 20.0, 30.0, 40.0])
    valid = Sessions.from_lists([[6, 6, 6, 6, 1]], end_time=[50.0])
    test = Sessions.from_lists([[7, 7, 7, 2], [1, 2, 3], [4, 6]], end_time=[60.0, 70.0, 80.0])
    return SessionDataset("toy", 7, Split.all_prefixes(train), Split.all_prefixes(valid), Split.all_prefixes(test))


def batch_of(split, n_items, index=None):
    index = np.arange(len(split)) if index is None else np.asarray(index)
    return collate_examples(split, index, n_items)


def pessimistic_hr20(model, ds) -> float:
    return evaluate(model, ds.test, ds.n_items, batch_size=500).metrics_pessimistic["HR@20"]


# --- pop ---------------------------------------------------------------------------------------------------

def test_pop_counts_every_training_click_and_ignores_valid_and_test():
    ds = toy_dataset()
    pop = Popularity(ds.n_items).fit(ds.train)
    scores = pop(batch_of(ds.test, ds.n_items))
    expected = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 0.0, 0.0])  # item 1: three clicks in one session + one
    assert scores.shape == (len(ds.test), ds.n_items)
    assert torch.equal(scores, expected.expand_as(scores))


def test_pop_needs_fit_and_checks_item_range():
    ds = toy_dataset()
    with pytest.raises(RuntimeError, match="fit"):
        Popularity(ds.n_items)(batch_of(ds.test, ds.n_items))
    with pytest.raises(ValueError, match="1..3"):
        Popularity(3).fit(ds.train)


# --- spop --------------------------------------------------------------------------------------------------

def test_spop_ranks_session_items_by_count_then_popularity():
    # global popularity: 1 > 2 > 3 > 4 = 5 > 6 = 7 = 0
    train = Sessions.from_lists([[1, 1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3], [4, 4], [5, 5]])
    test = Split.from_pairs([[4, 3, 4], [5]], [1, 1])
    model = SessionPopularity(7).fit(Split.all_prefixes(train))
    scores = model(batch_of(test, 7))
    s0 = scores[0]
    # in-session items first (4 twice, then 3 once), then the rest by global popularity
    order = torch.argsort(s0, descending=True, stable=True).tolist()
    assert order[:5] == [3, 2, 0, 1, 4]  # 0-based: items 4, 3, 1, 2, 5
    # the secondary term never outweighs one in-session click: least popular clicked item beats the most popular
    s1 = scores[1]
    assert s1[4] > s1[0] and s1[0] > s1[1] > s1[2] > s1[3]
    assert float(model.secondary.max()) < 1.0
    # equal popularity stays an exact tie (no noise): items 6 and 7 never clicked
    assert s0[5] == s0[6] and s1[5] == s1[6]
    assert torch.equal(scores, model(batch_of(test, 7)))


def test_spop_counts_come_from_the_prefix_only():
    ds = toy_dataset()
    model = SessionPopularity(ds.n_items).fit(ds.train)
    scores = model(batch_of(ds.test, ds.n_items))
    for row, (prefix, target) in enumerate(zip(*ds.test.pairs())):
        counts = np.bincount(prefix, minlength=ds.n_items + 1)[1:]
        assert np.array_equal(np.floor(scores[row].numpy()), counts), (prefix, target)


# --- sknn --------------------------------------------------------------------------------------------------

def sknn_reference(train_seqs, end_times, prefix, k, sample_size, similarity="cosine"):
    """Brute-force ContextKNN: candidates share an item; most recent `sample_size`; cosine or jaccard; top k."""
    sets, p = [set(s) for s in train_seqs], set(prefix)
    cand = [j for j, s in enumerate(sets) if s & p]
    if sample_size and len(cand) > sample_size:
        cand = sorted(cand, key=lambda j: end_times[j], reverse=True)[:sample_size]
    measure = {"cosine": lambda a, b: len(a & b) / math.sqrt(len(a) * len(b)),
               "jaccard": lambda a, b: len(a & b) / len(a | b)}[similarity]
    sims = [(measure(sets[j], p), end_times[j], j) for j in cand]
    sims.sort(key=lambda t: (-t[0], -t[1]))
    scores = defaultdict(float)
    for sim, _, j in sims[:k]:
        for item in sets[j]:
            scores[item] += sim
    return scores, {j for _, _, j in sims[:k]}


@pytest.mark.parametrize("k,sample_size,similarity", [(5, 20, "cosine"), (3, 0, "cosine"), (100, 500, "cosine"),
                                                     (5, 20, "jaccard")])
def test_sknn_matches_brute_force(tiny, k, sample_size, similarity):
    train = tiny.train.sessions
    # Shuffled end times: recency must come from the times, not the storage order.
    times = np.random.default_rng(1).permutation(len(train)).astype(np.float64)
    train = Sessions(train.items, train.offsets, times)
    model = SessionKNN(tiny.n_items, k=k, sample_size=sample_size, similarity=similarity).fit(Split.all_prefixes(train))
    index = np.arange(0, len(tiny.test), max(1, len(tiny.test) // 80))
    batch = batch_of(tiny.test, tiny.n_items, index)
    scores = model(batch).numpy()
    rows, ranks, _ = model.neighbours(batch)
    seqs = train.to_lists()
    for row, i in enumerate(index):
        ref, ref_neigh = sknn_reference(seqs, times, tiny.test.prefix(i).tolist(), k, sample_size, similarity)
        expected = np.zeros(tiny.n_items)
        for item, value in ref.items():
            expected[item - 1] = value
        np.testing.assert_allclose(scores[row], expected, rtol=1e-6, atol=1e-6)
        assert set(model.recency_order[ranks[rows == row]].tolist()) == ref_neigh


def test_sknn_recent_sampling_drops_older_better_neighbours():
    # The oldest session is the most similar (cosine 2/sqrt(6)), but with sample_size=2 only the two newest count.
    train = Sessions.from_lists([[1, 2, 6], [1, 3], [2, 4]], end_time=[1.0, 2.0, 3.0])
    test = Split.from_pairs([[1, 2]], [5])
    sampled = SessionKNN(6, k=10, sample_size=2).fit(Split.all_prefixes(train))
    everything = SessionKNN(6, k=10, sample_size=0).fit(Split.all_prefixes(train))
    assert sampled(batch_of(test, 6))[0, 5] == 0.0
    assert everything(batch_of(test, 6))[0, 5] == pytest.approx(2 / math.sqrt(6))


def test_sknn_neighbours_only_from_training_sessions():
    ds = toy_dataset()
    model = SessionKNN(ds.n_items).fit(ds.train)
    batch = batch_of(ds.test, ds.n_items)
    scores = model(batch)
    # Item 6 occurs in valid and in test session [4, 6] (the target of prefix [4]), never in train: a
    # model that indexed valid/test sessions (or the evaluated session itself) would score it.
    assert torch.all(scores[:, 5] == 0) and torch.all(scores[:, 6] == 0)
    _, ranks, _ = model.neighbours(batch)
    assert ranks.max() < len(ds.train.sessions)
    # prefix [4]: its only neighbour is training session [3, 2, 4] (cosine 1/sqrt(3))
    row = ds.test.pairs()[0].index([4])
    expected = np.zeros(ds.n_items)
    expected[[1, 2, 3]] = 1 / math.sqrt(3)
    np.testing.assert_allclose(scores[row].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["pop", "spop", "sknn"])
def test_baseline_output_contract(tiny, name):
    model, _ = build_model(name, tiny.n_items)
    assert model.trainable is False and list(model.parameters()) == []
    model.fit(tiny.train).eval()
    batch = batch_of(tiny.test, tiny.n_items, np.arange(37))
    scores = model(batch)
    assert scores.shape == (37, tiny.n_items) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert torch.equal(scores, model(batch))  # deterministic, no random tie-breaking noise
    audit = audit_order_invariance(model, tiny.test, tiny.n_items, batch_size=200)
    assert audit["differing"] == 0


def test_sknn_config_reaches_the_model():
    model, cfg = build_model("sknn", 10, {"k": 7, "sample_size": 0})
    assert (model.k, model.sample_size) == (7, 0) and cfg["k"] == 7


def test_sknn_and_spop_beat_pop_on_synthetic_small():
    from sbr_bench.data.synthetic import synthetic_dataset

    ds = synthetic_dataset("small", seed=0)
    hr = {name: pessimistic_hr20(build_model(name, ds.n_items)[0].fit(ds.train), ds)
          for name in ("pop", "spop", "sknn")}
    assert hr["sknn"] > hr["pop"] + 10.0, hr
    assert hr["spop"] > hr["pop"], hr


def test_sknn_overlaps_exact_when_items_have_more_sessions_than_the_sample():
    # 8 items over 300 sessions: every item sits in far more than `sample_size` sessions, so the
    # per-item truncation of the index is active for every prefix item.
    rng = np.random.default_rng(3)
    seqs = [rng.choice(8, size=rng.integers(2, 6), replace=True).tolist() for _ in range(300)]
    seqs = [[i + 1 for i in s] for s in seqs]
    times = rng.permutation(len(seqs)).astype(np.float64)
    train = Sessions.from_lists(seqs, end_time=times.tolist())
    test = Split.from_pairs([[1], [2, 3], [4, 4, 5, 1], [6, 7, 8, 2, 3]], [2, 4, 6, 1])
    for k, sample_size in [(3, 5), (10, 40), (7, 0)]:
        model = SessionKNN(8, k=k, sample_size=sample_size).fit(Split.all_prefixes(train))
        if sample_size:
            assert np.diff(model.item_sessions.indptr).max() == sample_size  # truncated
        batch = batch_of(test, 8)
        scores = model(batch).numpy()
        rows, ranks, _ = model.neighbours(batch)
        for row, (prefix, _) in enumerate(zip(*test.pairs())):
            ref, ref_neigh = sknn_reference(seqs, times, list(prefix), k, sample_size)
            expected = np.zeros(8)
            for item, value in ref.items():
                expected[item - 1] = value
            np.testing.assert_allclose(scores[row], expected, rtol=1e-6, atol=1e-7)
            assert set(model.recency_order[ranks[rows == row]].tolist()) == ref_neigh


@pytest.mark.parametrize("name", ["pop", "spop", "sknn"])
def test_scores_written_into_a_dirty_buffer_equal_fresh_scores(tiny, name):
    model, _ = build_model(name, tiny.n_items)
    model.fit(tiny.train)
    batch = batch_of(tiny.test, tiny.n_items, np.arange(53))
    fresh = model(batch)
    if name == "pop":  # one shared row, returned as a broadcast view (writing into it raises)
        assert fresh.stride(0) == 0
        with pytest.raises(RuntimeError):
            fresh.add_(1.0)
        return
    buf = torch.full((53, tiny.n_items), float("nan"))
    assert model(batch, out=buf) is buf and torch.equal(buf, fresh)


@pytest.mark.parametrize("name", ["pop", "spop", "sknn"])
def test_evaluate_ranks_baselines_by_definition(tiny, name):
    """evaluate (score buffer reused across batches) = ranks counted by definition on fresh scores."""
    model, _ = build_model(name, tiny.n_items)
    model.fit(tiny.train)
    scores = model(batch_of(tiny.test, tiny.n_items)).double().numpy()
    targets = tiny.test.pairs()[1]
    t = scores[np.arange(len(targets)), np.asarray(targets) - 1][:, None]
    greater = (scores > t).sum(1)
    res = evaluate(model, tiny.test, tiny.n_items, batch_size=97)
    assert np.array_equal(res.ranks_optimistic, 1 + greater)
    assert np.array_equal(res.ranks_pessimistic, greater + (scores == t).sum(1))


# --- the sparse evaluation path ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pop", "spop", "sknn"])
def test_sparse_ranks_are_the_dense_ranks(tiny, name):
    model, _ = build_model(name, tiny.n_items)
    model.fit(tiny.train)
    assert assert_sparse_path_exact(model, tiny.test, tiny.n_items).tie_rate > 0.1


@pytest.mark.parametrize("name", ["pop", "spop", "sknn"])
def test_sparse_ranks_with_unseen_items_and_targets_in_the_prefix(name):
    # toy test prefixes: [7] and [7, 7] (item 7 unseen in training: no sknn candidates; spop's target in
    # the prefix), [4] -> 6 (never clicked in training: a target off the candidates), pop ties 4 = 5, 6 = 7.
    ds = toy_dataset()
    model, _ = build_model(name, ds.n_items)
    model.fit(ds.train)
    assert_sparse_path_exact(model, ds.test, ds.n_items, batch_size=4)
    cases = sparse_cases(model, ds.test, ds.n_items)
    assert cases["target off"] > 0
    if name != "pop":
        assert cases["target stored"] > 0
    if name == "sknn":
        assert cases["empty"] > 0


def test_spop_sparse_rows_hold_the_dense_scores_of_the_prefix_items(tiny):
    model = SessionPopularity(tiny.n_items).fit(tiny.train)
    batch = batch_of(tiny.test, tiny.n_items, np.arange(0, len(tiny.test), 7))
    rows, background = model.sparse_scores(batch)
    dense = model(batch).numpy()
    r, c = rows.nonzero()
    assert np.array_equal(rows.data, dense[r, c]) and np.array_equal(background, model.secondary.numpy())
    unstored = np.ones_like(dense, dtype=bool)
    unstored[r, c] = False
    assert np.array_equal(dense[unstored], np.broadcast_to(background, dense.shape)[unstored])
