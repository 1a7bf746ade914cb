"""GRU4Rec: the session-parallel schedule against a step-by-step simulation of the official iterator, the
rebuilt sessions, the GRU's prefix states against stepping, both losses against the official formulas,
the carried hidden state (and an exact mid-epoch resume), gradients, defaults, and short training runs
that beat popularity."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from helpers import (assert_batching_invariant, assert_weight_groups_cover_every_linear,
                     popularity_hr20, trained_hr20)
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Sessions, Split
from sbr_bench.errors import ConfigError
from sbr_bench.models.gru4rec import GRU4Rec, SessionParallelBatch, SessionParallelLoader, training_sequences
from sbr_bench.models.registry import build_model
from sbr_bench.runs import Run
from sbr_bench.training import make_optimizer, train_model


def gru4rec(n_items, **overrides):
    torch.manual_seed(0)
    return build_model("gru4rec", n_items, {"dim": 16, **overrides})


def random_sessions(seed, n=40, n_items=30):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, n_items + 1, size=rng.integers(1, 9))) for _ in range(n)]


def official_steps(seqs, lanes, min_lanes):
    """The official iterator, one step at a time: every busy lane feeds its click and predicts the next; a
    lane at its session's last click takes the next session (lanes in order); lanes without one idle."""
    seqs = [s for s in seqs if len(s) > 1]
    lanes = min(lanes, len(seqs))
    lane = [[i, 0] for i in range(lanes)]  # (session, position), session -1 when idle
    following, steps = lanes, []
    while sum(s >= 0 for s, _ in lane) >= min_lanes and any(s >= 0 for s, _ in lane):
        step = []
        for s, p in lane:
            step.append((seqs[s][p], seqs[s][p + 1], p == 0, True) if s >= 0 else (0, 0, False, False))
        steps.append(step)
        for entry in lane:
            if entry[0] >= 0:
                entry[1] += 1
                if entry[1] == len(seqs[entry[0]]) - 1:
                    entry[:] = [following, 0] if following < len(seqs) else [-1, 0]
                    following += 1
    return steps


@pytest.mark.parametrize("lanes,n_sample", [(4, 8), (5, 0), (64, 8)])
def test_schedule_is_the_official_iterators(lanes, n_sample):
    seqs = random_sessions(lanes)
    loader = SessionParallelLoader(Split.all_prefixes(Sessions.from_lists(seqs)), lanes, np.ones(31), n_sample,
                                   0.5, seed=0)
    ours = [list(zip(loader.items[t].tolist(), loader.targets[t].tolist(), loader.reset[t].tolist(),
                     loader.active[t].tolist())) for t in range(len(loader))]
    assert ours == official_steps(seqs, lanes, 1 if n_sample else 2)


def test_every_training_pair_is_one_step():
    seqs = random_sessions(1, n=60)
    seqs += seqs[:5]  # repeated sessions stay repeated
    whole = Split.all_prefixes(Sessions.from_lists(seqs))
    assert [s.tolist() for s in training_sequences(whole)] == [s for s in seqs if len(s) > 1]
    examples = Counter((int(whole.prefix(i)[-1]), int(t)) for i, t in enumerate(whole.targets))
    loader = SessionParallelLoader(whole, 7, np.ones(31), 4, 0.5, seed=0)
    active = loader.active
    assert Counter(zip(loader.items[active].tolist(), loader.targets[active].tolist())) == examples
    # a split whose examples stop before a session's end: its sequences stop after the last target
    short = Split(whole.sessions, whole.ex_seq[whole.ex_len == 1], whole.ex_len[whole.ex_len == 1])
    assert [s.tolist() for s in training_sequences(short)] == [s[:2] for s in seqs if len(s) > 1]


def test_negatives_are_training_items_drawn_by_popularity():
    counts = np.array([0, 5, 0, 1, 0, 20], dtype=float)  # items 2 and 4 never clicked in training
    split = Split.all_prefixes(Sessions.from_lists([[1, 3], [5, 1], [5, 5]]))
    for alpha in (0.0, 1.0):
        loader = SessionParallelLoader(split, 2, counts, 4000, alpha, seed=0)
        drawn = np.bincount(np.concatenate([loader.samples(0, t) for t in range(3)]), minlength=6)
        assert drawn[[0, 2, 4]].sum() == 0
        expected = counts[1:] ** alpha * (counts[1:] > 0)
        np.testing.assert_allclose(drawn[1:] / drawn.sum(), expected / expected.sum(), atol=0.02)
    np.testing.assert_array_equal(loader.samples(1, 2), loader.samples(1, 2))  # (seed, epoch, step) decide
    assert not np.array_equal(loader.samples(1, 2), loader.samples(2, 2))


def test_bad_schedules_are_one_clear_error():
    split = Split.all_prefixes(Sessions.from_lists([[1, 2, 3]]))
    with pytest.raises(ConfigError, match="two lanes"):
        SessionParallelLoader(split, 1, np.ones(4), 0, 0.5, seed=0)  # no negatives without samples
    with pytest.raises(ConfigError, match="two or more clicks"):
        SessionParallelLoader(Split.all_prefixes(Sessions.from_lists([[1], [2]])), 2, np.ones(4), 8, 0.5, seed=0)
    with pytest.raises(ConfigError, match="model_overrides.gru4rec.loss"):
        build_model("gru4rec", 10, {"loss": "bpr-max", "session_parallel": False})


def test_prefix_states_equal_stepping_from_a_zero_state(tiny):
    model, _ = gru4rec(tiny.n_items, layers=2)
    model.eval()
    index = np.arange(0, 400, 13)
    batch = collate_examples(tiny.test, index, tiny.n_items)
    with torch.no_grad():
        enc = model.encode(batch)
        for b, i in enumerate(index):
            clicks = torch.as_tensor(tiny.test.prefix(i))
            hidden = torch.zeros(2, 1, 16)
            for k, item in enumerate(clicks):
                out, hidden = model.encoder.step(model.embedding(item[None]), hidden)
                torch.testing.assert_close(enc.h[enc.pos_batch == b][k], out[0], atol=1e-5, rtol=1e-5)
            # scores: the last state against the item table, plus the item bias
            model.item_bias.weight.normal_()
            expected = out[0] @ model.embedding.weight[1:].T + model.item_bias.weight[1:, 0]
            torch.testing.assert_close(model(collate_examples(tiny.test, [i], tiny.n_items))[0], expected,
                                       atol=1e-5, rtol=1e-5)


def step_batch(lanes=6, n_sample=5, n_items=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    active = torch.ones(lanes, dtype=torch.bool)
    active[-1] = False
    return SessionParallelBatch(torch.randint(1, n_items + 1, (lanes,), generator=g),
                                torch.randint(1, n_items + 1, (lanes,), generator=g),
                                torch.rand(lanes, generator=g) < 0.5, active,
                                torch.randint(1, n_items + 1, (n_sample,), generator=g))


def official_scores(model, batch):
    """The step's scores as the official code computes them: active lanes against [targets; samples]."""
    hidden = torch.zeros(1, batch.items.numel(), model.embedding.embedding_dim)
    out, _ = model.encoder.step(model.embedding(batch.items), hidden)
    y = torch.cat([batch.targets[batch.active], batch.samples])
    return out[batch.active] @ model.embedding.weight[y].T + model.item_bias.weight[y].T, y


@pytest.mark.parametrize("logq", [0.0, 1.0])
def test_sampled_cross_entropy_is_the_officials(logq):
    model, _ = gru4rec(20, logq=logq, sample_alpha=0.3)
    model.eval()
    model.item_bias.weight.data.normal_()
    model.item_counts = torch.arange(21, dtype=torch.float32) + 1
    batch = step_batch()
    scores, y = official_scores(model, batch)
    m = int(batch.active.sum())
    if logq:
        scores = scores - logq * torch.log(torch.cat([model.item_counts[y[:m]], model.item_counts[y[m:]] ** 0.3]))
    x = torch.exp(scores - scores.max(1, keepdim=True).values)
    x = x / x.sum(1, keepdim=True)
    expected = -torch.log(torch.diag(x) + 1e-24).sum() / m
    loss, parts = model.loss(batch)
    torch.testing.assert_close(loss, expected)
    assert set(parts) == {"cross-entropy"}


@pytest.mark.parametrize("elu", [0.0, 0.5])
def test_bpr_max_is_the_officials(elu):
    model, _ = gru4rec(20, loss="bpr-max", elu_param=elu, bpreg=0.7)
    model.eval()
    model.item_bias.weight.data.normal_()
    batch = step_batch()
    o, _ = official_scores(model, batch)
    if elu:
        o = F.elu(o, elu)
    hm = 1.0 - torch.eye(*o.shape)
    e = torch.exp(o * hm - (o * hm).max(1, keepdim=True).values) * hm
    softmax_neg = e / e.sum(1, keepdim=True)
    target = torch.diag(o)[:, None]
    expected = (-torch.log((torch.sigmoid(target - o) * softmax_neg).sum(1) + 1e-24)
                + 0.7 * (o ** 2 * softmax_neg).sum(1)).mean()
    torch.testing.assert_close(model.loss(batch)[0], expected, atol=1e-5, rtol=1e-5)


def test_the_hidden_state_carries_over_and_resets_and_travels_in_the_state_dict():
    model, _ = gru4rec(20)
    model.eval()
    first, second = step_batch(seed=1), step_batch(seed=2)
    model.loss(first)
    carried = model.lane_hidden.clone()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _ = model.loss(second)
    # by hand: the carried state, zeroed on lanes that start a session
    hidden = carried.masked_fill(second.reset[None, :, None], 0.0)
    out, _ = model.encoder.step(model.embedding(second.items), hidden)
    y = torch.cat([second.targets[second.active], second.samples])
    scores = out[second.active] @ model.embedding.weight[y].T + model.item_bias.weight[y].T
    torch.testing.assert_close(loss, F.cross_entropy(scores, torch.arange(len(scores))))
    fresh, _ = gru4rec(20)
    fresh.eval()
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.loss(second)[0], loss)


def test_the_state_carried_is_the_dropped_out_one_and_sparsevd_keeps_the_steps(tiny):
    from sbr_bench.sparsevd import SparseVD, SparseVDModel

    model, _ = gru4rec(20, dropout_hidden=0.5)
    model.train()
    batch = step_batch(seed=3)
    torch.manual_seed(1)
    model.loss(batch)
    carried = model.lane_hidden
    assert (carried == 0).float().mean() > 0.3  # about half the units dropped (and the rest scaled by 2)
    torch.manual_seed(1)
    out, _ = model.encoder.step(model.embedding(batch.items), torch.zeros(1, 6, 16))
    torch.testing.assert_close(carried[0], out.detach())
    model, cfg = gru4rec(tiny.n_items)
    wrapped = SparseVDModel(model, SparseVD(model), {"kl_scale": "per_example"}, len(tiny.train), 1)
    wrapped.prepare(tiny.train)
    loader = wrapped.train_loader(tiny.train, 64, seed=0)
    assert isinstance(loader, SessionParallelLoader) and wrapped.batches_per_epoch == len(loader) > 1


def test_gradients_reach_every_parameter(tiny):
    model, cfg = gru4rec(tiny.n_items, layers=2, dropout_hidden=0.2)
    model.prepare(tiny.train)
    loader = model.train_loader(tiny.train, 32, seed=0)
    model.train()
    batches = loader.batches()
    for _ in range(2):  # the second step carries the first one's state
        loss, _ = model.loss(next(batches))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_batching_invariance_in_eval_mode(tiny):
    assert_batching_invariant(gru4rec(tiny.n_items)[0], tiny.test, tiny.n_items)


def test_defaults_follow_the_official_code():
    model, cfg = build_model("gru4rec", 50)
    assert isinstance(model, GRU4Rec) and model.session_parallel
    assert (cfg["dim"], cfg["layers"], cfg["loss"], cfg["batch_size"], cfg["lr"], cfg["optimizer"], cfg["n_sample"],
            cfg["sample_alpha"], cfg["epochs"], cfg["l2"], cfg["dropout_embed"], cfg["dropout_hidden"]) == \
        (100, 1, "cross-entropy", 64, 0.05, "adagrad", 2048, 0.5, 10, 0.0, 0.0, 0.0)
    assert model.item_bias.weight.abs().sum() == 0
    bound = (6.0 / (50 + 100)) ** 0.5  # the official's item table: ±sqrt(6 / (n_items + d))
    assert 0.95 * bound < model.embedding.weight.abs().max() <= bound
    for linear in (model.encoder.x2h[0], model.encoder.h2h[0]):  # each gate ±sqrt(6 / (d + d)), zero bias
        assert 0.95 * 0.1732 < linear.weight.abs().max() <= (6.0 / 200) ** 0.5 and (linear.bias == 0).all()
    optimizer, _ = make_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.Adagrad)
    p = model.item_bias.weight
    p.grad = torch.zeros_like(p)
    p.grad[3] = 1e-3
    before = p.detach().clone()
    optimizer.step()  # the official's step: lr * g / sqrt(1e-6 + g^2), untouched rows unchanged
    torch.testing.assert_close(before - p.detach(), (0.05 * p.grad / (1e-6 + p.grad ** 2).sqrt()))


def test_bad_loss_is_a_config_error():
    from sbr_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="bpr-max"):
        build_model("gru4rec", 10, {"loss": "bpr"})


class Crash(Exception):
    pass


class CrashingGRU4Rec(GRU4Rec):
    def loss(self, batch):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == getattr(self, "crash_at", None):
            raise Crash()
        return super().loss(batch)


def test_a_crash_mid_epoch_resumes_exactly(tiny, tmp_path):
    overrides = dict(dim=16, epochs=2, patience=2, batch_size=32, n_sample=16, dropout_hidden=0.3)

    def run_to_end(folder, crash_at=None):
        model, cfg = gru4rec(tiny.n_items, **overrides)
        model.__class__ = CrashingGRU4Rec
        model.crash_at = crash_at
        run = Run(tmp_path / folder, "gru4rec", 0)
        train_model(model, tiny, cfg, run, seed=0, progress=False, checkpoint_every=7)
        return run

    reference = run_to_end("ref").read_summary()
    with pytest.raises(Crash):
        run_to_end("crashed", crash_at=200)
    resumed = run_to_end("crashed").read_summary()
    assert resumed["valid"] == reference["valid"] and resumed["test"] == reference["test"]


@pytest.mark.parametrize("overrides", [{}, {"loss": "bpr-max"}, {"session_parallel": False}])
def test_short_training_beats_popularity(tiny, overrides):
    hr, pop = trained_hr20("gru4rec", tiny, 3, dim=32, **overrides), popularity_hr20(tiny)
    assert hr > pop + 0.05, (hr, pop)


def test_training_on_the_real_diginetica_sample_beats_popularity(tmp_path):
    from sbr_bench import load_dataset

    data = load_dataset(str(shared_path("diginetica/srgnn_protocol_on_raw_sample")), data_dir=str(tmp_path))
    hr = trained_hr20("gru4rec", data, 5)
    pop = popularity_hr20(data)
    print(f"gru4rec (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop


def test_weight_groups_cover_every_linear():
    groups = assert_weight_groups_cover_every_linear(gru4rec(20, layers=2)[0])
    assert groups == {"gnn.gate_ih": ["encoder.x2h.0", "encoder.x2h.1"],
                      "gnn.gate_hh": ["encoder.h2h.0", "encoder.h2h.1"]}


def test_precision_is_refused_where_only_evaluation_would_change():
    from sbr_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="session-parallel GRU4Rec scores sampled items"):
        build_model("gru4rec", 30, {"precision": "bf16"})
    model, _ = build_model("gru4rec", 30, {"precision": "bf16", "session_parallel": False})
    assert model.scorer.precision == "bf16"
