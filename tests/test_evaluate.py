import numpy as np
import pytest
import torch
from torch import nn

from sbr_bench import evaluate as ev
from sbr_bench.data.sessions import Sessions, Split
from sbr_bench.evaluate import audit_order_invariance, bucket_metrics, evaluate, metrics_from_ranks


class FixedScores(nn.Module):
    """Scores from a fixed [examples, N] table, looked up by the example's target position hint."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def forward(self, batch):
        # the examples below are built so that the first item of the prefix identifies the example
        first = batch.x[batch.alias[torch.cat([torch.zeros(1, dtype=torch.long), batch.last[:-1] + 1])]]
        return self.table[first - 1]


def split_with_targets(targets):
    # example i: prefix [i+1], target targets[i]
    return Split.from_pairs([[i + 1] for i in range(len(targets))], targets)


def test_ranks_and_tie_rule():
    # 5 items; example 0: target 3 is the unique best; example 1: target 2 ties with 2 others at top
    table = [[0.1, 0.2, 0.9, 0.0, 0.3], [0.5, 0.5, 0.1, 0.5, 0.0]]
    res = evaluate(FixedScores(table), split_with_targets([3, 2]), n_items=5, batch_size=2)
    assert res.ranks_optimistic.tolist() == [1, 1]
    assert res.ranks_pessimistic.tolist() == [1, 3]
    assert res.ranks.tolist() == [1.0, 2.0]
    assert res.tie_rate == 0.5
    # expected MRR@20 under random tie-breaking: (1 + (1 + 1/2 + 1/3) / 3) / 2
    assert res.metrics["MRR@20"] == pytest.approx(100 * (1 + (1 + 1 / 2 + 1 / 3) / 3) / 2)
    assert res.metrics["HR@5"] == pytest.approx(100.0)
    assert res.metrics_pessimistic["MRR@20"] == pytest.approx(100 * (1 + 1 / 3) / 2)


def test_constant_scorer_is_random_level():
    n = 50
    res = evaluate(FixedScores(np.zeros((n, n))), split_with_targets(list(range(1, n + 1))), n_items=n)
    assert res.metrics["HR@20"] == pytest.approx(100 * 20 / n)
    assert res.metrics["HR@5"] == pytest.approx(100 * 5 / n)
    assert res.tie_rate == 1.0


def test_nonfinite_target_is_ranked_last():
    table = [[np.nan, 0.0, 0.0], [1.0, np.inf, 0.0]]
    res = evaluate(FixedScores(table), split_with_targets([1, 2]), n_items=3)
    assert res.ranks_pessimistic[0] == 3 and res.nonfinite == 2
    assert res.ranks_optimistic[1] == 3  # +inf target is not finite either


def test_metrics_independent_of_batch_size_and_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    n = 97
    table = rng.integers(0, 5, size=(n, n)).astype(float)  # many ties
    split = split_with_targets(rng.integers(1, n + 1, size=n).tolist())
    ref = evaluate(FixedScores(table), split, n_items=n, batch_size=n)
    for bs in (1, 7, 50):
        other = evaluate(FixedScores(table), split, n_items=n, batch_size=bs)
        assert np.array_equal(other.ranks, ref.ranks) and other.metrics == ref.metrics
    monkeypatch.setattr(ev, "MAX_SCORE_CELLS", 10 * 13)  # force several item chunks (two-pass path)
    chunked = evaluate(FixedScores(table), split, n_items=n, batch_size=10)
    assert np.array_equal(chunked.ranks_pessimistic, ref.ranks_pessimistic)
    assert np.array_equal(chunked.ranks_optimistic, ref.ranks_optimistic)


def test_metric_formulas_without_ties():
    m = metrics_from_ranks([1, 2, 4, 30], ks=(20,))
    assert m["HR@20"] == pytest.approx(75.0)
    assert m["MRR@20"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 4) / 4)
    assert m["NDCG@20"] == pytest.approx(100 * (1 + 1 / np.log2(3) + 1 / np.log2(5)) / 4)


def test_buckets_split_short_and_long():
    out = bucket_metrics([1, 30, 1, 1], [1, 30, 1, 1], lengths=[2, 5, 6, 9], edges=(5,))
    assert out["<=5"]["HR@20"] == pytest.approx(50.0) and out["<=5"]["examples"] == 2
    assert out[">5"]["HR@20"] == pytest.approx(100.0)


class BatchLeaky(nn.Module):
    """Scores depend on the other sessions in the batch: the audit must catch it."""

    def forward(self, batch):
        counts = torch.bincount(batch.x, minlength=21)[1:].float()
        return counts.expand(batch.num_graphs, -1).clone()


def test_audit_detects_batch_leakage():
    sessions = Sessions.from_lists([[i % 20 + 1, (3 * i) % 20 + 1, (7 * i) % 20 + 1] for i in range(60)])
    split = Split.all_prefixes(sessions)
    assert audit_order_invariance(BatchLeaky(), split, 20, batch_size=16)["differing"] > 0
    fair = FixedScores(np.tile(np.arange(20.0), (20, 1)))
    assert audit_order_invariance(fair, split, 20, batch_size=16)["differing"] == 0
