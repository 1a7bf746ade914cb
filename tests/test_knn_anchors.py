"""The kNN anchors V-SKNN, STAN, V-STAN and SF-SKNN: the vectorised neighbours and scores against per-example
implementations of their definitions, batching invariance, and beating popularity on real data
(session-rec's numbers: tests/test_sessionrec_agreement.py)."""

import math
import warnings
from collections import defaultdict

import numpy as np
import pytest
import torch

from conftest import shared_path
from helpers import popularity_hr20, test_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Sessions, Split
from sbr_bench.models.registry import build_model
from sbr_bench.models.sfsknn import SequenceFilterKNN
from sbr_bench.models.stan import DAY, STAN, VSTAN
from sbr_bench.models.vsknn import PREFIX_WEIGHTS, STEP_DECAYS, VSKNN
from test_evaluate import assert_sparse_path_exact, sparse_cases


def vsknn_reference(train_seqs, end_times, prefix, k, sample_size, similarity, weighting, weighting_score, remind):
    sets, p, n = [set(s) for s in train_seqs], set(prefix), len(prefix)
    last = {item: c for c, item in enumerate(prefix, 1)}
    w = {item: float(PREFIX_WEIGHTS[weighting](float(c), float(n))) for item, c in last.items()}
    cand = [j for j, s in enumerate(sets) if s & p]
    if sample_size and len(cand) > sample_size:
        cand = sorted(cand, key=lambda j: end_times[j], reverse=True)[:sample_size]
    sims = []
    for j in cand:
        shared = sum(w[i] for i in sets[j] & p)
        sim = shared / len(p) if similarity == "vec" else \
            shared / (math.sqrt(sum(v * v for v in w.values())) * math.sqrt(len(sets[j])))
        if sim > 0:
            sims.append((sim, end_times[j], j))
    sims.sort(key=lambda t: (-round(t[0], 12), -t[1]))
    scores = defaultdict(float)
    for sim, _, j in sims[:k]:
        step = next(d for d, item in enumerate(reversed(prefix), 1) if item in sets[j])
        for item in sets[j]:
            if remind or item not in p:
                scores[item] += sim * float(STEP_DECAYS[weighting_score](float(step)))
    return scores


@pytest.mark.parametrize("k,sample_size,similarity,weighting,weighting_score,remind", [
    (100, 1000, "vec", "div", "div", True), (5, 30, "cosine", "quadratic", "log", False),
    (10, 0, "vec", "linear", "linear", True), (3, 20, "cosine", "same", "quadratic", True),
    (20, 50, "vec", "log", "same", False)])
def test_vsknn_matches_its_definition_per_example(tiny, k, sample_size, similarity, weighting, weighting_score, remind):
    train = tiny.train.sessions
    times = np.random.default_rng(2).permutation(len(train)).astype(np.float64)  # recency from the times
    train = Sessions(train.items, train.offsets, times)
    model = VSKNN(tiny.n_items, k, sample_size, similarity, weighting, weighting_score, remind)
    model.fit(Split.all_prefixes(train))
    index = np.arange(0, len(tiny.test), max(1, len(tiny.test) // 60))
    scores = model(collate_examples(tiny.test, index, tiny.n_items)).numpy()
    seqs = train.to_lists()
    for row, i in enumerate(index):
        ref = vsknn_reference(seqs, times, tiny.test.prefix(i).tolist(), k, sample_size, similarity, weighting,
                              weighting_score, remind)
        expected = np.zeros(tiny.n_items)
        for item, value in ref.items():
            expected[item - 1] = value
        np.testing.assert_allclose(scores[row], expected, rtol=1e-5, atol=1e-6)


def test_vsknn_scores_do_not_depend_on_the_batch(tiny):
    model = VSKNN(tiny.n_items).fit(tiny.train)
    index = np.arange(40)
    together = model(collate_examples(tiny.test, index, tiny.n_items))
    apart = torch.cat([model(collate_examples(tiny.test, index[i:i + 7], tiny.n_items)) for i in range(0, 40, 7)])
    assert torch.equal(together, apart)


def test_bad_vsknn_options_are_refused():
    with pytest.raises(ValueError, match="vsknn weighting 'half'"):
        VSKNN(5, weighting="half")
    with pytest.raises(ValueError, match="vsknn similarity 'dot'"):
        VSKNN(5, similarity="dot")


def candidates(sets, end_times, prefix, sample_size):
    cand = [j for j, s in enumerate(sets) if s & set(prefix)]
    if sample_size and len(cand) > sample_size:
        cand = sorted(cand, key=lambda j: end_times[j], reverse=True)[:sample_size]
    return cand


def stan_reference(train_seqs, end_times, prefix, k, sample_size, spw, snh, inh, remind, ipw=0.0, idf=0.0):
    """STAN; with ipw or idf, V-STAN."""
    sets, p, n = [set(s) for s in train_seqs], set(prefix), len(prefix)
    clicks = defaultdict(int)
    for s in train_seqs:
        for item in s:
            clicks[item] += 1
    w = {item: math.exp((c - n) / spw) if spw else 1.0 for c, item in enumerate(prefix, 1)}  # last position wins
    latest = max(end_times)
    sims = []
    for j in candidates(sets, end_times, prefix, sample_size):
        sim = sum(w[i] for i in sets[j] & p) / (math.sqrt(sum(v * v for v in w.values())) * math.sqrt(len(sets[j])))
        sim *= math.exp((end_times[j] - latest) / (snh * DAY)) if snh else 1.0
        sims.append((sim, end_times[j], j))
    sims.sort(key=lambda t: (-round(t[0], 12), -t[1]))
    scores = defaultdict(float)
    for sim, _, j in sims[:k]:
        last = {item: pos for pos, item in enumerate(train_seqs[j], 1)}
        anchor = max(pos for item, pos in last.items() if item in p)
        latest = max(c for c, item in enumerate(prefix, 1) if item in sets[j])
        for item, pos in last.items():
            if remind or item not in p:
                vote = sim * (math.exp(-abs(pos - anchor) / inh) if inh else 1.0)
                vote *= math.exp((latest - n) / ipw) if ipw else 1.0
                vote *= 1.0 + idf * math.log(len(train_seqs) / clicks[item])
                scores[item] += vote
    return scores


def sfsknn_reference(train_seqs, end_times, prefix, k, sample_size):
    sets, p = [set(s) for s in train_seqs], set(prefix)
    follows = {(s[i], s[i + 1]) for s in train_seqs for i in range(len(s) - 1)}
    sims = [(len(sets[j] & p) / math.sqrt(len(sets[j]) * len(p)), end_times[j], j)
            for j in candidates(sets, end_times, prefix, sample_size)]
    sims.sort(key=lambda t: (-t[0], -t[1]))
    scores = defaultdict(float)
    for sim, _, j in sims[:k]:
        for item in sets[j]:
            if (prefix[-1], item) in follows:
                scores[item] += sim
    return scores


def check_against(model, reference, tiny, seed=3):
    train = tiny.train.sessions
    times = np.random.default_rng(seed).permutation(len(train)).astype(np.float64) * 3600.0  # an hour apart
    train = Sessions(train.items, train.offsets, times)
    model.fit(Split.all_prefixes(train))
    index = np.arange(0, len(tiny.test), max(1, len(tiny.test) // 60))
    scores = model(collate_examples(tiny.test, index, tiny.n_items)).numpy()
    seqs = train.to_lists()
    for row, i in enumerate(index):
        expected = np.zeros(tiny.n_items)
        for item, value in reference(seqs, times, tiny.test.prefix(i).tolist()).items():
            expected[item - 1] = value
        np.testing.assert_allclose(scores[row], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k,sample_size,spw,snh,inh,remind", [(100, 5000, 1.02, 5.0, 2.05, True),
                                                             (5, 40, 0.5, 0.5, 1.0, False), (10, 0, 0.0, 0.0, 0.0, True),
                                                             (3, 30, 4.0, 20.0, 0.0, True)])
def test_stan_matches_its_definition_per_example(tiny, k, sample_size, spw, snh, inh, remind):
    check_against(STAN(tiny.n_items, k, sample_size, spw, snh, inh, remind),
                  lambda seqs, times, prefix: stan_reference(seqs, times, prefix, k, sample_size, spw, snh, inh, remind),
                  tiny)


@pytest.mark.parametrize("k,sample_size,ipw,idf,remind", [(100, 5000, 1.02, 5.0, True), (5, 40, 0.5, 0.0, False),
                                                         (10, 0, 0.0, 2.0, True)])
def test_vstan_matches_its_definition_per_example(tiny, k, sample_size, ipw, idf, remind):
    check_against(VSTAN(tiny.n_items, k, sample_size, 1.02, 5.0, 2.05, ipw, idf, remind),
                  lambda seqs, times, prefix: stan_reference(seqs, times, prefix, k, sample_size, 1.02, 5.0, 2.05, remind,
                                                             ipw, idf), tiny)


@pytest.mark.parametrize("k,sample_size", [(100, 1000), (5, 30), (10, 0)])
def test_sfsknn_matches_its_definition_per_example(tiny, k, sample_size):
    check_against(SequenceFilterKNN(tiny.n_items, k, sample_size),
                  lambda seqs, times, prefix: sfsknn_reference(seqs, times, prefix, k, sample_size), tiny)


def test_stan_without_session_times_turns_its_time_decay_off_and_says_so():
    untimed = Split.all_prefixes(Sessions.from_lists([[1, 2, 3], [2, 3], [3, 1]]))
    with pytest.warns(UserWarning, match="session time decay \\(lambda_snh\\) is off"):
        model = STAN(4).fit(untimed)
    assert not model.time_decay
    batch = collate_examples(Split.from_pairs([[2, 3]], [1]), [0], 4)
    assert torch.equal(model(batch), STAN(4, lambda_snh=0.0).fit(untimed)(batch))


@pytest.mark.parametrize("name", ["vsknn", "stan", "vstan", "sfsknn"])
def test_beats_popularity_on_the_real_diginetica_sample(name, tmp_path):
    from sbr_bench import load_dataset

    data = load_dataset(str(shared_path("diginetica/srgnn_protocol_on_raw_sample")), data_dir=str(tmp_path))
    model, _ = build_model(name, data.n_items)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stan: SR-GNN's preprocessed sample has no session times
        model.fit(data.train)
    hr, pop = test_hr20(model, data), popularity_hr20(data)
    print(f"{name} (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop


def test_anchors_are_selected_by_name_and_all_keeps_its_meaning():
    from sbr_bench.models.registry import resolve_names

    assert resolve_names("anchors") == ["pop", "spop", "ar", "sr", "sknn", "vsknn", "sfsknn", "stan", "vstan",
                                        "gru4rec", "stamp"]
    assert resolve_names("all") == ["pop", "spop", "sknn", "nextitnet", "narm", "srgnn", "gcsan", "sgnnhn", "lessr",
                                    "niser", "dhcn", "dsan", "attenmixer"]  # today's models and the Table 2 rows


# --- the sparse evaluation path ------------------------------------------------------------------------------

ANCHORS = {
    "vsknn": lambda n: VSKNN(n),
    "vsknn-no-remind": lambda n: VSKNN(n, 10, 50, "cosine", "quadratic", "linear", remind=False),
    "stan": lambda n: STAN(n),
    "stan-no-remind": lambda n: STAN(n, 5, 40, 0.5, 0.5, 1.0, remind=False),
    "vstan": lambda n: VSTAN(n),
    "vstan-no-remind": lambda n: VSTAN(n, 10, 0, remind=False),
    "sfsknn": lambda n: SequenceFilterKNN(n),
}


@pytest.mark.parametrize("name", ANCHORS)
def test_sparse_ranks_are_the_dense_ranks(tiny, name):
    model = ANCHORS[name](tiny.n_items).fit(tiny.train)
    assert assert_sparse_path_exact(model, tiny.test, tiny.n_items).tie_rate > 0.05


@pytest.mark.parametrize("name", ANCHORS)
def test_sparse_ranks_with_no_candidates_and_targets_in_the_prefix(name):
    train = Split.all_prefixes(Sessions.from_lists([[1, 2, 3], [2, 3, 4], [3, 4, 5, 3], [1, 5], [2, 2, 6], [4, 1]],
                                                   end_time=[3600.0 * i for i in range(6)]))
    # [9] and [8]: unseen items, no candidates; [1, 2] -> 1 and [2, 5, 2] -> 2: the target is in the
    # prefix (removed without remind); [3, 4] -> 6 and [8, 1] -> 7: targets off the candidates.
    test = Split.from_pairs([[9], [8], [1, 2], [3, 4], [2, 5, 2], [8, 1], [4], [5, 3]], [9, 1, 1, 6, 2, 7, 3, 2])
    model = ANCHORS[name](9).fit(train)
    res = assert_sparse_path_exact(model, test, 9, batch_size=3)
    assert res.ranks_pessimistic[0] == 9  # nothing scored: a tie of all 9 items
    cases = sparse_cases(model, test, 9)
    assert cases["empty"] >= 2 and cases["target off"] >= 2 and cases["target stored"] >= 1
