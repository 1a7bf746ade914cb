"""NISER+: the scores against its equations per session, positions, batching invariance, gradients,
defaults, and a short training run that beats popularity."""

import numpy as np
import torch
import torch.nn.functional as F

from conftest import shared_path
from helpers import assert_batching_invariant, assert_gradients_reach_every_parameter, popularity_hr20, trained_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.models.base import NormalisedInput
from sbr_bench.models.registry import build_model


def niser(n_items, **overrides):
    torch.manual_seed(0)
    return build_model("niser", n_items, {"dim": 16, **overrides})


def test_scores_match_the_equations_per_session(tiny):
    model, cfg = niser(tiny.n_items, step=2)
    model.eval()
    ro, emb = model.readout, model.embedding.weight
    batch = collate_examples(tiny.test, np.arange(0, 400, 9), tiny.n_items)
    with torch.no_grad():
        scores = model(batch)
        nodes = model.encoder.encoder.propagate(batch, lambda ids: F.normalize(model.embedding(ids), dim=-1))[1]
        for b in range(batch.num_graphs):
            clicks = batch.alias[batch.alias_batch == b]
            h = nodes[clicks] + ro.positions.weight[: len(clicks)]  # positions from the session start
            h_t = h[-1]
            alpha = ro.linear_three(torch.sigmoid(ro.linear_one(h_t) + ro.linear_two(h)))
            s = ro.linear_transform(torch.cat([(alpha * h).sum(0), h_t]))
            expected = 16.0 * F.normalize(s, dim=0) @ F.normalize(emb[1:], dim=-1).T
            torch.testing.assert_close(scores[b], expected, atol=1e-4, rtol=1e-4)


def test_normalised_dropped_out_inputs_and_long_sessions(tiny):
    model, cfg = niser(tiny.n_items, max_positions=3)
    assert isinstance(model.encoder, NormalisedInput) and model.encoder.norm == "l2"
    assert model.encoder.dropout.p == 0.1 and cfg["sigma"] == 16.0
    model.eval()
    batch = collate_examples(tiny.test, np.arange(60), tiny.n_items)  # prefixes longer than 3 positions
    assert int(batch.length.max()) > 3 and torch.isfinite(model(batch)).all()


def test_batching_invariance_in_eval_mode(tiny):
    assert_batching_invariant(niser(tiny.n_items)[0], tiny.test, tiny.n_items)


def test_gradients_reach_every_parameter(tiny):
    assert_gradients_reach_every_parameter(niser(tiny.n_items)[0], tiny.train, tiny.n_items)


def test_weight_groups_are_sr_gnns():
    model, _ = niser(20)
    assert set(model.weight_groups()) == set(build_model("srgnn", 20)[0].weight_groups())


def test_short_training_beats_popularity(tiny):
    hr, pop = trained_hr20("niser", tiny, 4, dim=32, batch_size=64, lr=3e-3), popularity_hr20(tiny)
    assert hr > pop + 0.05, (hr, pop)


def test_training_on_the_real_diginetica_sample_beats_popularity(tmp_path):
    from sbr_bench import load_dataset

    data = load_dataset(str(shared_path("diginetica/srgnn_protocol_on_raw_sample")), data_dir=str(tmp_path))
    hr = trained_hr20("niser", data, 10, dim=64, lr=3e-3, batch_size=50)
    pop = popularity_hr20(data)
    print(f"niser (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop
