"""The training loop: learning, validation-only selection, a single test pass, failures, schedules."""

import numpy as np
import pytest
import torch
from torch_geometric.utils import scatter

from sbr_bench import evaluate as ev
from sbr_bench.data.sessions import Split
from sbr_bench.models.base import DotScorer, EmbeddingEncoder, Readout, SBRModel
from sbr_bench.runs import Run
from sbr_bench.training import TrainingFailed, evaluate_split, seed_everything, train_model

CFG = dict(dim=16, batch_size=100, lr=0.01, l2=0.0, lr_step=3, lr_decay=0.1, epochs=2, patience=3,
           optimizer="adam", dropout=0.0)


class MeanReadout(Readout):
    """Session vector = mean of its position states (enough to learn the synthetic concepts)."""

    def forward(self, enc, batch):
        return scatter(enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="mean")


def mean_model(n_items, dim=16, seed=0):
    seed_everything(seed)
    model = SBRModel(n_items, dim, EmbeddingEncoder(dim), MeanReadout(), DotScorer())
    model.reset_parameters()
    return model


class CountingEvaluate:
    """Wraps the real evaluator and records which split each call ranked."""

    def __init__(self, dataset):
        self.real, self.dataset, self.calls = ev.evaluate, dataset, []

    def __call__(self, model, split, *args, **kwargs):
        name = next((n for n in ("train", "valid", "test") if getattr(self.dataset, n) is split), "other")
        self.calls.append(name)
        return self.real(model, split, *args, **kwargs)


def test_training_lowers_loss_and_beats_untrained(tiny, tmp_path):
    cfg = dict(CFG, epochs=3)
    untrained = evaluate_split(mean_model(tiny.n_items), tiny.test, tiny.n_items, "cpu").metrics
    summary = train_model(mean_model(tiny.n_items), tiny, cfg, Run(tmp_path / "u", "mean", 0), progress=False)
    rows = Run(tmp_path / "u").read_epochs()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert summary["status"] == "ok"
    assert summary["test"]["MRR@20"] > untrained["MRR@20"] + 5
    assert summary["test"]["HR@20"] > untrained["HR@20"] + 10
    # the selected epoch's validation numbers are the summary's (HR and MRR from the same epoch)
    assert summary["valid"] == rows[summary["best_epoch"]]["valid"]
    assert summary["valid"]["MRR@20"] == max(r["valid"]["MRR@20"] for r in rows)
    for r in rows:
        t = r["time"]
        assert t["train"] == pytest.approx(t["data"] + t["forward"] + t["backward"])
        assert r["examples"] == len(tiny.train) and r["examples_per_s"] > 0 and r["host_peak_rss_mb"] > 0


def test_selection_uses_validation_only_and_test_runs_once(tiny, tmp_path, monkeypatch):
    cfg = dict(CFG, epochs=3)
    counter = CountingEvaluate(tiny)
    monkeypatch.setattr(ev, "evaluate", counter)
    a = train_model(mean_model(tiny.n_items), tiny, cfg, Run(tmp_path / "a", "mean", 0), progress=False)
    # test exactly once, after all selection; then the leakage audit re-ranks the validation split twice
    assert counter.calls == ["valid"] * 3 + ["test"] + ["valid"] * 2

    # Same run with a garbage test split (every target replaced by a random item): selection is unchanged.
    rng = np.random.default_rng(1)
    prefixes, _ = tiny.test.pairs()
    garbage = Split.from_pairs(prefixes, rng.integers(1, tiny.n_items + 1, len(prefixes)).tolist())
    broken = type(tiny)(tiny.name, tiny.n_items, tiny.train, tiny.valid, garbage, tiny.meta)
    counter_b = CountingEvaluate(broken)
    monkeypatch.setattr(ev, "evaluate", counter_b)
    b = train_model(mean_model(tiny.n_items), broken, cfg, Run(tmp_path / "b", "mean", 0), progress=False)
    assert counter_b.calls == ["valid"] * 3 + ["test"] + ["valid"] * 2
    assert b["best_epoch"] == a["best_epoch"] and b["valid"] == a["valid"]
    assert [r["valid"] for r in Run(tmp_path / "a").read_epochs()] == [r["valid"] for r in Run(tmp_path / "b").read_epochs()]
    assert b["test"]["MRR@20"] < a["test"]["MRR@20"]  # the garbage did reach the test pass


def test_ranks_file_has_bounds_and_prefix_lengths(tiny, tmp_path):
    run = Run(tmp_path / "r", "mean", 0)
    train_model(mean_model(tiny.n_items), tiny, dict(CFG, epochs=1), run, progress=False)
    ranks = run.read_ranks()
    assert len(ranks["expected"]) == len(tiny.test)
    assert np.array_equal(ranks["length"], tiny.test.ex_len)
    assert np.all(ranks["optimistic"] <= ranks["expected"]) and np.all(ranks["expected"] <= ranks["pessimistic"])
    summary = run.read_summary()
    assert ev.metrics_from_ranks(ranks["optimistic"], ranks["pessimistic"])["MRR@20"] == pytest.approx(
        summary["test"]["MRR@20"])
    assert run.load_checkpoint()["finished"] is True  # the slim checkpoint of the selected weights


def test_early_stopping_counts_epochs_without_improvement(tiny, tmp_path):
    # lr = 0: validation never improves after epoch 0, so patience 2 stops after epochs 0, 1, 2.
    summary = train_model(mean_model(tiny.n_items), tiny, dict(CFG, lr=0.0, epochs=10, patience=2),
                          Run(tmp_path / "p", "mean", 0), progress=False)
    assert summary["epochs_trained"] == 3 and summary["best_epoch"] == 0 and summary["stopped_early"]


@pytest.mark.parametrize("at_start, expected", [(False, [0.01, 0.005, 0.0025]), (True, [0.005, 0.0025, 0.00125])])
def test_scheduler_steps_at_epoch_end_or_start_compat(tiny, tmp_path, at_start, expected):
    cfg = dict(CFG, epochs=3, lr_step=1, lr_decay=0.5, batch_size=1000, scheduler_at_start_compat=at_start)
    train_model(mean_model(tiny.n_items), tiny, cfg, Run(tmp_path / "s", "mean", 0), progress=False)
    assert [r["lr"] for r in Run(tmp_path / "s").read_epochs()] == pytest.approx(expected)


def test_adamw_is_selected(tiny, tmp_path, monkeypatch):
    used = []
    real = torch.optim.AdamW

    def spy(groups, **k):
        used.append(groups)
        return real(groups, **k)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    train_model(mean_model(tiny.n_items), tiny, dict(CFG, epochs=1, optimizer="adamw", l2=0.05),
                Run(tmp_path / "w", "mean", 0), progress=False)
    assert used and [g["weight_decay"] for g in used[0]] == [0.05]


class NanModel(SBRModel):
    def loss(self, batch):
        loss, parts = super().loss(batch)
        return loss * float("nan"), parts


class OomModel(SBRModel):
    def loss(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("cls, reason", [(NanModel, "non-finite loss"), (OomModel, "out of memory")])
def test_failures_raise_training_failed(tiny, tmp_path, cls, reason):
    model = cls(tiny.n_items, 16, EmbeddingEncoder(16), MeanReadout(), DotScorer())
    with pytest.raises(TrainingFailed, match=reason):
        train_model(model, tiny, dict(CFG, epochs=1), Run(tmp_path / "f", "bad", 0), progress=False)


class FakePop(torch.nn.Module):
    """A counting baseline: scores = training popularity."""

    trainable = False

    def __init__(self, n_items):
        super().__init__()
        self.n_items, self.fitted_on = n_items, []
        self.register_buffer("counts", torch.zeros(n_items))

    def fit(self, train):
        self.fitted_on.append(train)
        self.counts = torch.bincount(torch.from_numpy(train.sessions.items) - 1, minlength=self.n_items).float()

    def forward(self, batch):
        return self.counts.expand(batch.num_graphs, -1)


def test_baseline_is_fitted_once_on_train_and_evaluated(tiny, tmp_path, monkeypatch):
    counter = CountingEvaluate(tiny)
    monkeypatch.setattr(ev, "evaluate", counter)
    pop = FakePop(tiny.n_items)
    run = Run(tmp_path / "pop", "pop", 0)
    summary = train_model(pop, tiny, {}, run, progress=False)
    assert pop.fitted_on == [tiny.train] and counter.calls == ["valid", "test", "valid", "valid"]
    assert summary["status"] == "ok" and summary["timing"]["fit_s"] >= 0
    random_mrr = 100 * np.mean([1 / r for r in range(1, 21)]) * 20 / tiny.n_items
    assert summary["test"]["MRR@20"] > random_mrr
    assert len(run.read_ranks()["expected"]) == len(tiny.test)


def test_lookups_train_with_sparse_gradients_that_the_table_gradient_absorbs(tiny):
    """In training, an encoder's lookups have sparse gradients; the scoring products' dense table gradient
    absorbs them, to the same values as dense lookups give."""
    model = mean_model(tiny.n_items)
    batch = next(iter(ev.collate_examples(tiny.train, np.arange(64), tiny.n_items) for _ in range(1)))
    model.train()
    model.loss(batch)[0].backward()
    got = model.embedding.weight.grad
    assert got.layout == torch.strided
    model.zero_grad(set_to_none=True)
    s = MeanReadout()(EmbeddingEncoder(16)(batch, model.embedding), batch)  # dense lookups, autograd's own way
    torch.nn.functional.cross_entropy(s @ model.embedding.weight[1:].t(), batch.y - 1).backward()
    torch.testing.assert_close(got, model.embedding.weight.grad)


class LookupOnlyModel(SBRModel):
    """Scores against a table of its own: its item embedding gets only the lookups' gradient."""

    def __init__(self, n_items):
        super().__init__(n_items, 16, EmbeddingEncoder(16), MeanReadout(), DotScorer())
        self.output = torch.nn.Parameter(torch.randn(n_items, 16) * 0.1)

    def session_repr(self, batch):
        enc = self.encode(batch)
        return self.readout(enc, batch), self.output, enc


def test_a_table_never_scored_still_trains_with_the_fused_optimizer(tiny, tmp_path):
    seed_everything(0)
    model = LookupOnlyModel(tiny.n_items)
    before = model.embedding.weight.detach().clone()
    out = train_model(model, tiny, dict(CFG, epochs=1), Run(tmp_path / "r", "m", 0), progress=False)
    assert out["status"] == "ok" and not torch.equal(before, model.embedding.weight.detach())


def test_sparse_lookups_only_for_plain_embeddings_in_training(tiny):
    """Dense lookups where a sparse gradient would not be taken: no grad, a frozen table, the model's flag, an
    embedding subclass (its own forward) or scale_grad_by_freq (no sparse version)."""
    import copy
    import pickle

    from sbr_bench.models.base import _SparseLookups

    seen = []

    class Spy(EmbeddingEncoder):
        def forward(self, batch, embedding):
            seen.append(type(embedding).__name__)
            return super().forward(batch, embedding)

    model = SBRModel(tiny.n_items, 16, Spy(16), MeanReadout(), DotScorer())
    batch = ev.collate_examples(tiny.train, np.arange(8), tiny.n_items)
    model.encode(batch)
    with torch.no_grad():
        model.encode(batch)
    model.sparse_lookups = False
    model.encode(batch)
    model.sparse_lookups = True
    model.embedding.scale_grad_by_freq = True
    model.encode(batch)
    assert seen == ["_SparseLookups", "Embedding", "Embedding", "Embedding"]
    wrapper = _SparseLookups(model.embedding, model.embedding.weight)
    assert copy.deepcopy(wrapper).embedding_dim == 16 and pickle.loads(pickle.dumps(wrapper)).embedding_dim == 16


def test_the_two_uses_of_the_table_sum_their_gradients():
    """_TwoUses: the scoring products' dense gradient and the lookups' sparse one are summed (in place
    only into a gradient it may reuse); either alone passes through."""
    from sbr_bench.models.base import _TwoUses

    weight = torch.randn(6, 3, requires_grad=True)
    rows = torch.sparse_coo_tensor(torch.tensor([[1, 4, 1]]), torch.ones(3, 3), (6, 3), check_invariants=True)
    dense = torch.randn(6, 3)
    for upstream in (dense.clone(), dense.t().contiguous().t()):  # a fresh gradient, and a strided one
        scored, looked_up = _TwoUses.apply(weight)
        kept = upstream.clone()
        (got,) = torch.autograd.grad((scored, looked_up), weight, (upstream, rows))
        torch.testing.assert_close(got, dense + rows.to_dense())
        if not upstream.is_contiguous():
            assert torch.equal(upstream, kept)  # not written into
    scored, looked_up = _TwoUses.apply(weight)
    alone = torch.autograd.grad(looked_up, weight, rows)[0]  # a table never scored: dense all the same
    assert not alone.is_sparse and torch.equal(alone, rows.to_dense())
    scored, looked_up = _TwoUses.apply(weight)
    assert torch.equal(torch.autograd.grad(scored, weight, dense)[0], dense)
