import numpy as np
import pytest
import torch
from torch import nn

from helpers import popularity_hr20, trained_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.models.narm import NARMEncoder, NARMReadout
from sbr_bench.models.registry import build_model


def narm(n_items, **overrides):
    torch.manual_seed(0)
    model, cfg = build_model("narm", n_items, {"dim": 16, **overrides})
    return model, cfg


def test_shapes_and_packed_states(tiny):
    model, _ = narm(tiny.n_items)
    model.eval()
    batch = collate_examples(tiny.test, np.arange(50), tiny.n_items)
    enc = model.encode(batch)
    assert enc.h.shape == (batch.alias.numel(), 16)
    assert model(batch).shape == (50, tiny.n_items)
    assert model.session_repr(batch)[0].shape == (50, 16)


def test_gru_states_match_torch_gru_per_session(tiny):
    """The packed x2h/h2h GRU equals nn.GRU run on each prefix alone (same weights, h_0 = 0)."""
    model, _ = narm(tiny.n_items)
    model.eval()
    enc_mod = model.encoder
    gru = nn.GRU(16, 16, batch_first=True)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(enc_mod.x2h.weight)
        gru.bias_ih_l0.copy_(enc_mod.x2h.bias)
        gru.weight_hh_l0.copy_(enc_mod.h2h.weight)
        gru.bias_hh_l0.zero_()
    index = np.arange(0, len(tiny.test), 97)
    batch = collate_examples(tiny.test, index, tiny.n_items)
    with torch.no_grad():
        h = model.encode(batch).h
        for b, i in enumerate(index):
            prefix = torch.as_tensor(tiny.test.prefix(i))
            expected, _ = gru(model.embedding(prefix).unsqueeze(0))
            torch.testing.assert_close(h[batch.alias_batch == b], expected[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_softmax", [True, False])
def test_readout_matches_per_session_formula(tiny, attn_softmax):
    model, _ = narm(tiny.n_items, attn_softmax=attn_softmax)
    model.eval()
    ro = model.readout
    batch = collate_examples(tiny.test, np.arange(0, 300, 7), tiny.n_items)
    with torch.no_grad():
        enc = model.encode(batch)
        s = ro(enc, batch)
        for b in range(batch.num_graphs):
            hs = enc.h[batch.alias_batch == b]
            ht = hs[-1]
            e = ro.v(torch.sigmoid(ro.a1(ht) + ro.a2(hs))).squeeze(-1)
            alpha = torch.softmax(e, 0) if attn_softmax else e
            c = torch.cat([ht, (alpha[:, None] * hs).sum(0)])
            torch.testing.assert_close(s[b], ro.b(c), atol=1e-5, rtol=1e-5)


def test_batching_invariance_in_eval_mode(tiny):
    model, _ = narm(tiny.n_items)
    model.eval()
    index = np.arange(0, len(tiny.test), 11)
    with torch.no_grad():
        together = model(collate_examples(tiny.test, index, tiny.n_items))
        alone = torch.cat([model(collate_examples(tiny.test, [i], tiny.n_items)) for i in index[:20]])
        shuffled_idx = index[::-1].copy()
        shuffled = model(collate_examples(tiny.test, shuffled_idx, tiny.n_items)).flip(0)
    torch.testing.assert_close(together[:20], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together, shuffled, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter(tiny):
    model, _ = narm(tiny.n_items)
    model.train()
    batch = collate_examples(tiny.train, np.arange(200), tiny.n_items)
    loss, parts = model.loss(batch)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_weight_groups_cover_every_linear(tiny):
    model, _ = narm(tiny.n_items)
    groups = model.weight_groups()
    assert groups == {
        "gnn.gate_ih": ["encoder.x2h"], "gnn.gate_hh": ["encoder.h2h"], "readout.query": ["readout.a1"],
        "readout.key": ["readout.a2"], "readout.other": ["readout.v"], "readout.transform": ["readout.b"],
    }
    modules = dict(model.named_modules())
    listed = {p for paths in groups.values() for p in paths}
    assert all(isinstance(modules[p], nn.Linear) for p in listed)
    assert listed == {n for n, m in modules.items() if isinstance(m, nn.Linear)}


def test_defaults_and_init_follow_the_authors():
    model, cfg = build_model("narm", 50)
    assert (cfg["dim"], cfg["batch_size"], cfg["lr"], cfg["l2"], cfg["epochs"]) == (100, 512, 1e-3, 0.0, 30)
    assert (cfg["dropout"], cfg["ct_dropout"], cfg["attn_softmax"], cfg["lr_decay"]) == (0.25, 0.5, True, 1.0)
    assert isinstance(model.encoder, NARMEncoder) and isinstance(model.readout, NARMReadout)
    assert model.encoder.dropout.p == 0.25 and model.readout.dropout.p == 0.5
    for gate in model.encoder.h2h.weight.detach().chunk(3, dim=0):  # orthogonal recurrent gates
        torch.testing.assert_close(gate @ gate.t(), torch.eye(100), atol=1e-4, rtol=0)
    assert torch.all(model.encoder.x2h.bias == 0)


def test_short_training_beats_popularity(tiny):
    """dim 32, 4 epochs on the tiny synthetic set (a few seconds): pessimistic HR@20 must beat pop's."""
    hr_narm, hr_pop = trained_hr20("narm", tiny, 4, dim=32, batch_size=64), popularity_hr20(tiny)
    assert hr_narm > hr_pop + 0.05, (hr_narm, hr_pop)
