"""Rule anchors (sr, ar): the rules against a hand-written miner, scores from the last click, batching
invariance, session-rec's numbers on its own rsc15 100k split, and beating popularity on real data."""

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from conftest import shared_path
from helpers import popularity_hr20, test_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Sessions, Split
from sbr_bench.models.registry import build_model
from sbr_bench.models.rules import WEIGHTINGS, AssociationRules, SequentialRules
from test_evaluate import assert_sparse_path_exact, sparse_cases

SESSIONS = [[1, 2, 3, 2, 4], [2, 3], [3, 1, 2, 5, 6, 2], [4, 4, 1], [6, 5, 2, 3]]


def mine(sessions, pairs, pruning):
    """Rules as session-rec writes them: dict insertion order = first seen, `most_common` keeps the
    strongest (ties: first seen)."""
    rules = defaultdict(dict)
    for session in sessions:
        for a, b, w in pairs(session):
            rules[a][b] = rules[a].get(b, 0.0) + w
    if pruning:
        for a in rules:
            ranked = sorted(rules[a].items(), key=lambda kv: -kv[1])  # stable: first seen wins ties
            rules[a] = dict(ranked[:pruning])
    return rules


def sr_pairs(steps, weighting):
    def pairs(s):
        for j in range(1, len(s)):
            for i in range(1, min(steps, j) + 1):
                yield s[j - i], s[j], WEIGHTINGS[weighting](i)
    return pairs


def ar_pairs(s):
    for j in range(1, len(s)):
        for k in range(j):
            yield s[k], s[j], 1.0
            yield s[j], s[k], 1.0


def as_dict(model):
    rules = model.rules.tocoo()
    out = defaultdict(dict)
    for a, b, w in zip(rules.row, rules.col, rules.data):
        out[int(a)][int(b)] = float(w)
    return out


def train_split():
    return Split.all_prefixes(Sessions.from_lists(SESSIONS))


@pytest.mark.parametrize("steps,weighting,pruning", [(10, "div", 0), (2, "linear", 0), (3, "quadratic", 2),
                                                     (10, "same", 1), (1, "log", 0)])
def test_sequential_rules_are_the_hand_mined_ones(steps, weighting, pruning):
    model = SequentialRules(7, steps, weighting, pruning).fit(train_split())
    expected = mine(SESSIONS, sr_pairs(steps, weighting), pruning)
    got = as_dict(model)
    assert got.keys() == expected.keys()
    for a in expected:
        assert got[a].keys() == expected[a].keys(), (a, got[a], expected[a])
        for b in expected[a]:
            assert math.isclose(got[a][b], expected[a][b])


@pytest.mark.parametrize("pruning", [0, 1, 2])
def test_association_rules_are_the_hand_mined_ones(pruning):
    model = AssociationRules(7, pruning).fit(train_split())
    expected = mine(SESSIONS, ar_pairs, pruning)
    assert {a: set(r) for a, r in as_dict(model).items()} == {a: set(r) for a, r in expected.items()}
    for a in expected:
        assert all(as_dict(model)[a][b] == w for b, w in expected[a].items())


@pytest.mark.parametrize("cls", [SequentialRules, AssociationRules])
def test_scores_are_the_rules_of_the_last_click_in_any_batch(cls):
    model = cls(7).fit(train_split())
    test = Split.from_pairs([[1], [2, 3], [6, 5, 2], [5, 4], [3, 3, 1]], [2, 4, 3, 1, 2])
    scores = model(collate_examples(test, np.arange(5), 7))
    dense = model.rules.toarray()
    for row, (prefix, _) in enumerate(zip(*test.pairs())):
        np.testing.assert_allclose(scores[row].numpy(), dense[prefix[-1], 1:], rtol=1e-6)
    one_by_one = torch.cat([model(collate_examples(test, np.array([i]), 7)) for i in range(5)])
    assert torch.equal(scores, one_by_one)
    out = torch.full_like(scores, 7.0)  # a reused buffer is overwritten, not added to
    assert torch.equal(model(collate_examples(test, np.arange(5), 7), out=out), scores)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="weighting 'half'"):
        SequentialRules(5, weighting="half")
    with pytest.raises(ValueError, match="steps >= 1"):
        SequentialRules(5, steps=0)
    with pytest.raises(ValueError, match="pruning >= 0"):
        AssociationRules(5, pruning=-1)


@pytest.mark.parametrize("name", ["sr", "ar"])
def test_beats_popularity_on_the_real_diginetica_sample(name, tmp_path):
    from sbr_bench import load_dataset

    data = load_dataset(str(shared_path("diginetica/srgnn_protocol_on_raw_sample")), data_dir=str(tmp_path))
    model, _ = build_model(name, data.n_items)
    model.fit(data.train)
    hr, pop = test_hr20(model, data), popularity_hr20(data)
    print(f"{name} (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop


# --- the sparse evaluation path ------------------------------------------------------------------------------

RULES = {
    "sr": lambda n: SequentialRules(n),
    # weights 1 - 0.1 i: rules 10 steps apart weigh exactly 0, farther ones less, below the background 0
    "sr-linear-20": lambda n: SequentialRules(n, 20, "linear", 0),
    "ar": lambda n: AssociationRules(n),
    "ar-unpruned": lambda n: AssociationRules(n, 0),
}


@pytest.mark.parametrize("name", RULES)
def test_sparse_ranks_are_the_dense_ranks(tiny, name):
    model = RULES[name](tiny.n_items).fit(tiny.train)
    assert assert_sparse_path_exact(model, tiny.test, tiny.n_items).tie_rate > 0.1
    if name == "sr-linear-20":
        rows, _ = model.sparse_scores(collate_examples(tiny.test, np.arange(len(tiny.test)), tiny.n_items))
        assert (rows.data < 0).any() and (rows.data == 0).any()


@pytest.mark.parametrize("name", RULES)
def test_sparse_ranks_without_rules_for_the_last_click(name):
    # [3, 7]: item 7 is never clicked in training, no rules; [6, 5, 2] -> 7: a target off the candidates.
    test = Split.from_pairs([[3, 7], [1], [2, 3], [6, 5, 2], [5, 4], [4, 4]], [2, 2, 4, 7, 1, 4])
    model = RULES[name](7).fit(train_split())
    assert_sparse_path_exact(model, test, 7, batch_size=4)
    cases = sparse_cases(model, test, 7)
    assert cases["empty"] >= 1 and cases["target off"] >= 2 and cases["target stored"] >= 1
