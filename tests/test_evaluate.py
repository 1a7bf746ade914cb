import numpy as np
import pytest
import scipy.sparse as sp
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


def naive_ranks(table, targets):
    """Rank by definition, one example at a time: optimistic = 1 + #greater, pessimistic adds the
    other items with an equal score; a non-finite target is ranked last."""
    table = np.asarray(table, dtype=np.float64)
    n = table.shape[1]
    opt, pes = [], []
    for row, target in zip(table, targets):
        t = row[target - 1]
        if not np.isfinite(t):
            opt.append(n), pes.append(n)
            continue
        others = np.delete(row, target - 1)
        opt.append(1 + int((others > t).sum()))
        pes.append(opt[-1] + int((others == t).sum()))
    return np.array(opt), np.array(pes)


class TableDot(nn.Module):
    """A `session_repr` model whose DotScorer reproduces a fixed [examples, N] table exactly: the session
    vector is the example's one-hot row, the candidate table the transposed score table."""

    def __init__(self, table, scorer):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.scorer = scorer

    def session_repr(self, batch):
        first = batch.x[batch.alias[torch.cat([torch.zeros(1, dtype=torch.long), batch.last[:-1] + 1])]]
        s = torch.nn.functional.one_hot(first - 1, self.table.shape[0]).float()
        return s, self.table.t().contiguous(), None


class FixedScoresOut(FixedScores):
    """Like the counting baselines: writes into the evaluator's `out=` buffer (holding the previous batch)."""

    def forward(self, batch, out=None):
        scores = super().forward(batch)
        return scores if out is None else out.copy_(scores)


class PlainDot(nn.Module):
    """A scorer without `out=`: the evaluator must fall back to the scores it returns."""

    def forward(self, s, items):
        return s @ items.t()


def tricky_table(seed=0, n=61):
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 4, size=(n, n)).astype(float)  # many ties
    table[rng.random((n, n)) < 0.05] = np.nan  # NaN candidates are neither above nor equal
    table[3, :] = np.inf  # a row of +inf: target +inf is non-finite -> last
    table[5, 10] = -np.inf
    targets = rng.integers(1, n + 1, size=n)
    targets[5] = 11
    return table, targets


@pytest.mark.parametrize("cells", [None, 7 * 13, 7 * 61, 1])
@pytest.mark.parametrize("count_cells", [None, 1, 100])
def test_buffered_scores_match_naive_ranks_across_chunks(monkeypatch, cells, count_cells):
    from sbr_bench.models.base import DotScorer

    table, targets = tricky_table()
    split = split_with_targets(targets.tolist())
    if cells is not None:  # several item chunks (two-pass path), down to one item per chunk
        monkeypatch.setattr(ev, "MAX_SCORE_CELLS", cells)
    if count_cells is not None:  # counting row blocks of one row, or a few
        monkeypatch.setattr(ev, "COUNT_CELLS", count_cells)
    # A one-hot matmul cannot carry NaN/inf (0 * inf = NaN), so the scorer models get the finite ties only.
    finite = np.where(np.isfinite(table), table, 2.0)
    cases = [(table, FixedScores(table)), (table, FixedScoresOut(table)),
             (finite, TableDot(finite, DotScorer())), (finite, TableDot(finite, PlainDot()))]
    for scores, model in cases:
        opt, pes = naive_ranks(scores, targets)
        res = evaluate(model, split, n_items=len(table), batch_size=7)
        assert np.array_equal(res.ranks_optimistic, opt), type(model)
        assert np.array_equal(res.ranks_pessimistic, pes), type(model)
        assert res.nonfinite == sum(not np.isfinite(scores[i, t - 1]) for i, t in enumerate(targets))
    assert res.tie_rate > 0.5


def test_scores_go_into_one_reused_buffer():
    from sbr_bench.models.base import DotScorer

    seen = []

    class Spy(DotScorer):
        def forward(self, s, items, out=None):
            seen.append(None if out is None else out.untyped_storage().data_ptr())
            return super().forward(s, items, out=out)

    table, targets = tricky_table(1)
    evaluate(TableDot(table, Spy()), split_with_targets(targets.tolist()), n_items=len(table), batch_size=10)
    assert len(seen) == 7 and None not in seen and len(set(seen)) == 1


@pytest.mark.parametrize("b,d,n", [(37, 16, 501), (6, 64, 200), (7, 3, 50)])
def test_dot_scorer_out_gives_the_same_scores(b, d, n):
    from sbr_bench.models.base import DotScorer

    g = torch.Generator().manual_seed(0)
    s, items = torch.randn(b, d, generator=g), torch.randn(n, d, generator=g)
    out = torch.full((b, n), float("nan"))
    assert DotScorer()(s, items, out=out) is out
    assert torch.equal(out, DotScorer()(s, items))


# --- the sparse path: rows of candidate scores over a background -----------------------------------------

def sparse_case(background, seed=0, rows=60, n=23):
    """Random sparse rows with many ties (stored values from a few levels, the background's among them),
    empty and full rows, NaN and inf entries, targets stored and not; and the same scores densely."""
    rng = np.random.default_rng(seed)
    dense = np.tile(np.broadcast_to(np.asarray(background, dtype=np.float32), (n,)), (rows, 1))
    stored = rng.random((rows, n)) < rng.choice([0.0, 0.1, 0.5, 1.0], size=(rows, 1))
    levels = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.inf, np.nan], dtype=np.float32)
    values = rng.choice(levels, size=(rows, n), p=[0.2, 0.2, 0.2, 0.2, 0.14, 0.03, 0.03])
    if np.ndim(background) == 0:
        values[rng.random((rows, n)) < 0.1] = background  # stored, yet equal to the background
    dense[stored] = values[stored]
    r, c = np.nonzero(stored)
    sparse_rows = sp.csr_matrix((dense[r, c], (r, c)), shape=(rows, n))
    assert (sparse_rows.data == 0).any()  # explicit zeros are stored entries too
    return sparse_rows, dense, rng.integers(0, n, size=rows)


@pytest.mark.parametrize("background", [0.0, -1.5, 2.0, -np.inf, "row"])
def test_sparse_rank_counts_are_the_dense_counts(background):
    rng = np.random.default_rng(1)
    if background == "row":  # a finite row with ties, as pop's counts
        background = rng.choice([0.0, 1.0, 3.0, 0.5], size=23).astype(np.float32)
    for seed in range(5):
        rows, dense, target0 = sparse_case(background, seed)
        assert (np.diff(rows.indptr) == 0).any() and (np.diff(rows.indptr) == rows.shape[1]).any()
        table = torch.from_numpy(dense)
        want = ev.rank_counts(lambda c0, c1: table[:, c0:c1], torch.from_numpy(target0), dense.shape[1], 5)
        sorted_background = None if np.ndim(background) == 0 else np.sort(background)
        got = ev.sparse_rank_counts(rows, background, target0, sorted_background)
        for w, g in zip(want, got):
            assert np.array_equal(w.numpy(), g)
        assert (got[1] > 0).mean() > 0.3  # the case has ties


def test_the_sparse_path_ranks_off_candidate_targets_against_the_background():
    # 5 items, background 0: row 0 stores item 2 (0-based 1) at 1.0 and item 4 at 0.0 (explicit);
    # row 1 stores nothing; row 2 stores item 1 at -1.
    rows = sp.csr_matrix((np.array([1.0, 0.0, -1.0], np.float32), ([0, 0, 2], [1, 3, 0])), shape=(3, 5))
    greater, equal, finite = ev.sparse_rank_counts(rows, 0.0, np.array([3, 2, 0]))
    assert greater.tolist() == [1, 0, 4] and equal.tolist() == [3, 4, 0] and finite.all()


class SparseOnly(FixedScores):
    """`sparse_scores` that put the target first while `forward`'s table is constant: which path ran shows."""

    def sparse_scores(self, batch):
        target0 = (batch.y - 1).numpy()
        return sp.csr_matrix((np.ones(len(target0), np.float32), (np.arange(len(target0)), target0)),
                                shape=(len(target0), self.table.shape[1])), 0.0


def test_evaluate_takes_the_sparse_path_when_the_model_has_one():
    split = split_with_targets([1, 2, 3, 4])
    model = SparseOnly(np.zeros((4, 4)))
    assert evaluate(model, split, n_items=4).ranks_pessimistic.tolist() == [1, 1, 1, 1]
    assert evaluate(model, split, n_items=4, sparse=False).ranks_pessimistic.tolist() == [4, 4, 4, 4]
    assert evaluate(FixedScores(np.zeros((4, 4))), split, n_items=4).ranks_pessimistic.tolist() == [4, 4, 4, 4]


def test_a_subclass_that_overrides_only_forward_is_ranked_by_its_forward():
    class OwnForward(SparseOnly):  # e.g. a plugin built on a kNN anchor, changing its scores in `forward`
        def forward(self, batch, out=None):
            return super().forward(batch)

    split = split_with_targets([1, 2, 3, 4])
    assert evaluate(OwnForward(np.zeros((4, 4))), split, n_items=4).ranks_pessimistic.tolist() == [4, 4, 4, 4]


def assert_sparse_path_exact(model, split, n_items, batch_size=61):
    """The sparse path's ranks are the dense path's, element for element; returns the dense result."""
    assert hasattr(model, "sparse_scores"), type(model)
    dense = evaluate(model, split, n_items, batch_size=batch_size, sparse=False)
    sparse = evaluate(model, split, n_items, batch_size=batch_size, sparse=True)
    assert np.array_equal(sparse.ranks_optimistic, dense.ranks_optimistic)
    assert np.array_equal(sparse.ranks_pessimistic, dense.ranks_pessimistic)
    assert sparse.nonfinite == dense.nonfinite and sparse.metrics == dense.metrics
    return dense


def sparse_cases(model, split, n_items) -> dict:
    """How many examples have no candidates, a target among the candidates, a target off them (scored
    as the background) — so a test can show that its data reach each case."""
    from sbr_bench.data.graphs import collate_examples

    batch = collate_examples(split, np.arange(len(split)), n_items)
    rows, _ = model.sparse_scores(batch)
    target0 = (batch.y - 1).numpy()
    stored = np.diff(rows.indptr)
    hit = np.zeros(len(target0), dtype=bool)
    row_of = np.repeat(np.arange(len(target0)), stored)
    hit[row_of[rows.indices == target0[row_of]]] = True
    return {"empty": int((stored == 0).sum()), "target stored": int(hit.sum()), "target off": int((~hit).sum())}
