"""STAMP: shapes, the readout against its equations per session, both reference-code flags, batching
invariance, gradients, weight groups, defaults, and a short training run that beats popularity."""

import numpy as np
import pytest
import torch

from conftest import shared_path
from helpers import (assert_batching_invariant, assert_gradients_reach_every_parameter,
                     assert_weight_groups_cover_every_linear, popularity_hr20, trained_hr20)
from sbr_bench.data.graphs import collate_examples
from sbr_bench.models.registry import build_model
from sbr_bench.models.stamp import STAMPReadout


def stamp(n_items, **overrides):
    torch.manual_seed(0)
    return build_model("stamp", n_items, {"dim": 16, **overrides})


def test_shapes(tiny):
    model, _ = stamp(tiny.n_items)
    model.eval()
    batch = collate_examples(tiny.test, np.arange(50), tiny.n_items)
    assert model(batch).shape == (50, tiny.n_items)
    assert model.session_repr(batch)[0].shape == (50, 16)


@pytest.mark.parametrize("bias,add_mean", [(True, False), (False, True)])
def test_readout_matches_the_equations_per_session(tiny, bias, add_mean):
    model, _ = stamp(tiny.n_items, bias=bias, add_mean_compat=add_mean)
    model.eval()
    ro = model.readout
    assert (ro.mlp_s.bias is not None) == bias
    batch = collate_examples(tiny.test, np.arange(0, 300, 7), tiny.n_items)
    emb = model.embedding.weight
    with torch.no_grad():
        scores = model(batch)
        for b in range(batch.num_graphs):
            x = emb[batch.x[batch.alias[batch.alias_batch == b]]]  # the prefix's clicks in order
            x_t, m_s = x[-1], x.mean(0)
            alpha = x @ ro.w1.weight.T + x_t @ ro.w2.weight.T + m_s @ ro.w3.weight.T
            if bias:
                alpha = alpha + ro.w3.bias
            alpha = torch.sigmoid(alpha) @ ro.w0.weight.T  # [n, 1], not normalised
            m_a = (alpha * x).sum(0) + (m_s if add_mean else 0)
            h_s = m_a @ ro.mlp_s.weight.T + (ro.mlp_s.bias if bias else 0)
            h_t = x_t @ ro.mlp_t.weight.T + (ro.mlp_t.bias if bias else 0)
            expected = (torch.tanh(h_s) * torch.tanh(h_t)) @ emb[1:].T
            torch.testing.assert_close(scores[b], expected, atol=1e-5, rtol=1e-5)


def test_batching_invariance_in_eval_mode(tiny):
    assert_batching_invariant(stamp(tiny.n_items)[0], tiny.test, tiny.n_items)


def test_gradients_reach_every_parameter(tiny):
    assert_gradients_reach_every_parameter(stamp(tiny.n_items)[0], tiny.train, tiny.n_items)


def test_weight_groups_cover_every_linear(tiny):
    groups = assert_weight_groups_cover_every_linear(stamp(tiny.n_items)[0])
    assert groups["readout.transform"] == ["readout.mlp_s", "readout.mlp_t"]


def test_defaults_follow_the_authors_configuration():
    model, cfg = build_model("stamp", 50)
    assert (cfg["dim"], cfg["batch_size"], cfg["lr"], cfg["l2"], cfg["epochs"], cfg["lr_decay"]) == \
        (100, 512, 3e-3, 0.0, 10, 1.0)
    assert isinstance(model.readout, STAMPReadout) and not model.readout.add_mean_compat


def test_short_training_beats_popularity(tiny):
    hr, pop = trained_hr20("stamp", tiny, 4, dim=32, batch_size=64), popularity_hr20(tiny)
    assert hr > pop + 0.05, (hr, pop)


def test_training_on_the_real_diginetica_sample_beats_popularity(tmp_path):
    from sbr_bench import load_dataset

    data = load_dataset(str(shared_path("diginetica/srgnn_protocol_on_raw_sample")), data_dir=str(tmp_path))
    hr = trained_hr20("stamp", data, 10, dim=64, batch_size=50)
    pop = popularity_hr20(data)
    print(f"stamp (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop
