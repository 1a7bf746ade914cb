"""DSAN: shapes, the scores against the equations per session, padding and batching invariance, gradients,
weight groups, defaults and initialisation, and short training runs that beat popularity."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import shared_path
from helpers import (assert_batching_invariant, assert_gradients_reach_every_parameter,
                     assert_weight_groups_cover_every_linear, popularity_hr20, trained_hr20)
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Split
from sbr_bench.errors import ConfigError
from sbr_bench.models import registry
from sbr_bench.models.dsan import DSANEncoder, DSANReadout
from sbr_bench.models.registry import build_model
from sbr_bench.training import make_optimizer

try:  # the reference implementation the authors use, when installed (test extra); else ours
    from entmax import entmax_bisect as reference_entmax
except ImportError:  # pragma: no cover - depends on the environment
    from sbr_bench.nn.entmax import entmax as reference_entmax


def dsan(n_items, **overrides):
    torch.manual_seed(0)
    return build_model("dsan", n_items, {"dim": 16, "pos_dim": 8, **overrides})


def test_shapes(tiny):
    model, _ = dsan(tiny.n_items)
    model.eval()
    batch = collate_examples(tiny.test, np.arange(50), tiny.n_items)
    assert model(batch).shape == (50, tiny.n_items)  # the target token is no candidate
    s, items, enc = model.session_repr(batch)
    assert s.shape == (50, 16) and items.shape == (tiny.n_items, 16)
    assert enc.h.shape == (batch.alias.numel(), 24) and enc.extras["target"].shape == (50, 24)


def session_scores(model, items: torch.Tensor) -> torch.Tensor:
    """DSAN's equations for one session of item ids, dense, with the target token appended last."""
    enc, ro = model.encoder, model.readout
    emb, n = model.embedding.weight, items.numel()
    pos = enc.positions.weight
    x = torch.cat([emb[items], pos[torch.arange(n).clamp(max=pos.size(0) - 1)]], dim=1)  # [n, D]
    t = torch.cat([enc.target, pos[min(n, pos.size(0) - 1)]])
    X = torch.cat([x, t[None]])  # [n+1, D]

    def alpha(v):
        return max(torch.sigmoid(v @ enc.alpha_w.weight[0] + enc.alpha_w.bias[0]).item() + 1, 1 + 1e-5)

    q = torch.relu(X @ enc.query.weight.T + enc.query.bias)
    a = reference_entmax(q @ X.T / math.sqrt(X.size(1)), torch.tensor([[alpha(t)]]), dim=-1)
    f = a @ X
    f = f + torch.relu(f @ enc.ffn1.weight.T + enc.ffn1.bias) @ enc.ffn2.weight.T + enc.ffn2.bias
    f = F.layer_norm(f, (X.size(1),), enc.norm.weight, enc.norm.bias)
    m_s, x_hat = f[-1], f[:-1]
    logits = torch.relu(x_hat @ ro.key.weight.T + m_s @ ro.query.weight.T + ro.query.bias) @ ro.w0.weight[0]
    beta = reference_entmax(logits[None], torch.tensor([[alpha(m_s)]]), dim=-1)[0]
    c_g = beta @ x  # over the input vectors
    c = F.selu(torch.cat([c_g, m_s]) @ ro.transform.weight.T + ro.transform.bias)
    return 20.0 * F.normalize(c, dim=0) @ F.normalize(emb[1:], dim=1).T


def test_scores_match_the_equations_per_session(tiny):
    model, _ = dsan(tiny.n_items, max_positions=6)  # some sessions are longer: their positions clamp
    model.eval()
    batch = collate_examples(tiny.test, np.arange(0, 300, 7), tiny.n_items)
    assert batch.length.max() > 6
    with torch.no_grad():
        scores = model(batch)
        for b in range(batch.num_graphs):
            items = batch.x[batch.alias[batch.alias_batch == b]]
            torch.testing.assert_close(scores[b], session_scores(model, items), atol=1e-4, rtol=1e-4)


def test_dsan_is_a_built_in_model():
    assert registry.list_models()["dsan"].startswith("DSAN")


def test_learned_alpha_lies_in_its_range_and_is_floored(tiny):
    model, _ = dsan(tiny.n_items)
    model.eval()
    batch = collate_examples(tiny.test, np.arange(200), tiny.n_items)
    with torch.no_grad():
        alpha = model.encode(batch).extras["alpha_global"]
        assert alpha.shape == (200, 1) and ((alpha > 1) & (alpha < 2)).all()
        nn.init.constant_(model.encoder.alpha_w.bias, -40.0)  # σ(·) underflows: α would be exactly 1
        assert (model.encode(batch).extras["alpha_global"] == torch.tensor(1 + 1e-5)).all()
        assert torch.isfinite(model(batch)).all()


def test_scores_do_not_depend_on_padding(tiny):
    """A session scored with a longer one (padded to its length) scores as it does alone."""
    model, _ = dsan(tiny.n_items)
    model.eval()
    longest = tiny.test.prefix(int(np.argmax(tiny.test.ex_len))).tolist()
    short = longest[:2]
    with torch.no_grad():
        alone = model(collate_examples(Split.from_pairs([short], [1]), [0], tiny.n_items))
        padded = model(collate_examples(Split.from_pairs([short, longest], [1, 1]), [0, 1], tiny.n_items))
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)


def test_batching_invariance_in_eval_mode(tiny):
    assert_batching_invariant(dsan(tiny.n_items)[0], tiny.test, tiny.n_items)


def test_gradients_reach_every_parameter(tiny):
    assert_gradients_reach_every_parameter(dsan(tiny.n_items)[0], tiny.train, tiny.n_items)


def test_weight_groups_cover_every_linear(tiny):
    groups = assert_weight_groups_cover_every_linear(dsan(tiny.n_items)[0])
    assert groups["gnn.propagation"] == ["encoder.query", "encoder.ffn1", "encoder.ffn2"]
    assert groups["gnn.other"] == ["encoder.alpha_w"]
    assert (groups["readout.key"], groups["readout.query"], groups["readout.other"], groups["readout.transform"]) \
        == (["readout.key"], ["readout.query"], ["readout.w0"], ["readout.transform"])


def test_defaults_and_initialisation_follow_the_authors_code():
    torch.manual_seed(0)
    model, cfg = build_model("dsan", 500)
    assert (cfg["dim"], cfg["pos_dim"], cfg["dropout"], cfg["w"], cfg["batch_size"], cfg["lr"], cfg["l2"],
            cfg["lr_decay"], cfg["optimizer"]) == (100, 100, 0.5, 20.0, 512, 1e-3, 0.0, 1.0, "amsgrad")
    assert isinstance(model.encoder, DSANEncoder) and isinstance(model.readout, DSANReadout)
    assert model.scorer.sigma == 20.0 and model.encoder.positions.weight.shape == (200, 100)
    optimizer, _ = make_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["amsgrad"]
    ro = model.readout
    for linear in (ro.key, ro.query, ro.w0):  # N(0, 0.05)
        assert abs(linear.weight.std().item() - 0.05) < 0.01 and linear.weight.abs().max() > 0.1
    assert (ro.query.bias == 0).all() and (model.encoder.query.bias == 0).all()
    assert (model.encoder.norm.weight == 1).all() and (model.encoder.norm.bias == 0).all()
    assert model.embedding.weight.abs().max() <= 0.1  # the suite's U(±1/√d)
    with pytest.raises(ConfigError, match="model_overrides.dsan.max_positions"):
        build_model("dsan", 30, {"max_positions": 0})


def test_short_training_beats_popularity(tiny):
    hr, pop = trained_hr20("dsan", tiny, 3, dim=32, pos_dim=16, batch_size=64, lr=3e-3), popularity_hr20(tiny)
    assert hr > pop + 0.05, (hr, pop)


def test_training_on_the_real_diginetica_sample_beats_popularity(tmp_path):
    from sbr_bench import load_dataset

    data = load_dataset(str(shared_path("diginetica/srgnn_protocol_on_raw_sample")), data_dir=str(tmp_path))
    hr = trained_hr20("dsan", data, 10, dim=64, lr=3e-3, batch_size=50)
    pop = popularity_hr20(data)
    print(f"dsan (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop
