"""LESSR and DHCN: shapes, batching invariance, EOPA/SGAT/hypergraph internals against naive references,
train-only hypergraph, gradients, and a short training run that must beat popularity."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.utils import scatter

from helpers import popularity_hr20, trained_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Sessions, Split
from sbr_bench.models.dhcn import hyperedge_items, hypergraph_operator
from sbr_bench.nn.eopa_conv import EOPAConv as EOPA, GRUGates, last_gru_state
from sbr_bench.nn.sgat_conv import SGATConv as SGAT
from sbr_bench.models.registry import build_model

MODELS = ["lessr", "dhcn"]


def built(name, ds, **overrides):
    torch.manual_seed(0)
    model, cfg = build_model(name, ds.n_items, {"dim": 16, **overrides})
    model.prepare(ds.train)
    return model, cfg


def batch_of(model, split, index, n_items):
    return collate_examples(split, np.asarray(index), n_items, extra=model.extra_graphs)


def warm_batch_norm(model, ds):
    """A few training-mode forwards so BatchNorm running statistics are not the trivial 0/1."""
    model.train()
    with torch.no_grad():
        for b in range(3):
            model(batch_of(model, ds.train, np.arange(b * 100, b * 100 + 100), ds.n_items))


# ---------------------------------------------------------------- both models


@pytest.mark.parametrize("name", MODELS)
def test_scores_cover_all_items(name, tiny):
    model, _ = built(name, tiny)
    batch = batch_of(model, tiny.train, np.arange(37), tiny.n_items)
    for mode in (True, False):
        model.train(mode)
        scores = model(batch)
        assert scores.shape == (37, tiny.n_items)
        assert torch.isfinite(scores).all()
    single_clicks = np.flatnonzero(tiny.train.ex_len == 1)[:5]  # no transitions at all in this batch
    scores = model(batch_of(model, tiny.train, single_clicks, tiny.n_items))
    assert scores.shape == (5, tiny.n_items) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", MODELS)
def test_session_scores_do_not_depend_on_the_batch(name, tiny):
    model, _ = built(name, tiny)
    warm_batch_norm(model, tiny)
    model.eval()
    index = np.arange(200, 264)
    lengths = tiny.test.ex_len[index]
    assert lengths.max() >= 4  # some sessions with a real graph
    with torch.no_grad():
        together = model(batch_of(model, tiny.test, index, tiny.n_items))
        for row in (0, int(np.argmax(lengths)), 63):
            alone = model(batch_of(model, tiny.test, index[row : row + 1], tiny.n_items))
            torch.testing.assert_close(alone[0], together[row], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name, tiny):
    model, _ = built(name, tiny)
    model.train()
    loss, parts = model.loss(batch_of(model, tiny.train, np.arange(64), tiny.n_items))
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing
    if name == "dhcn":
        assert "aux" in parts and parts["aux"] > 0


@pytest.mark.parametrize("name", MODELS)
def test_weight_groups_name_linear_layers(name, tiny):
    model, _ = built(name, tiny)
    groups = model.weight_groups()
    modules = dict(model.named_modules())
    listed = [p for paths in groups.values() for p in paths]
    assert listed and len(listed) == len(set(listed))
    assert all(isinstance(modules[p], nn.Linear) for p in listed)
    every_linear = {n for n, m in modules.items() if isinstance(m, nn.Linear)}
    assert set(listed) == every_linear  # every weight matrix is measured, none twice
    if name == "lessr":
        assert {"gnn.propagation", "gnn.gate_ih", "gnn.gate_hh", "gnn.other"} <= set(groups)
    else:
        assert not any(g.startswith("gnn.") for g in groups)  # DHCN's convolution has no weights


# ---------------------------------------------------------------- LESSR internals


def naive_last_states(gru: GRUGates, feat, edge_index):
    """Per-node loop with torch's own nn.GRU carrying the same weights: the reference to match."""
    dim = feat.shape[1]
    ref = nn.GRU(dim, dim, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(gru.x2h.weight)
        ref.bias_ih_l0.copy_(gru.x2h.bias)
        ref.weight_hh_l0.copy_(gru.h2h.weight)
        ref.bias_hh_l0.copy_(gru.h2h.bias)
    out = torch.zeros_like(feat)
    src, dst = edge_index.tolist()
    for v in range(feat.shape[0]):
        messages = [feat[u] for u, w in zip(src, dst) if w == v]  # edge (time) order
        if messages:
            _, h = ref(torch.stack(messages).unsqueeze(0))
            out[v] = h[0, 0]
    return out


def test_eopa_matches_a_per_node_gru_loop(tiny):
    torch.manual_seed(1)
    batch = collate_examples(tiny.train, np.arange(300, 340), tiny.n_items, extra=("eop",))
    gru = GRUGates(8)
    feat = torch.randn(batch.num_nodes, 8)
    with torch.no_grad():
        src, dst = batch.eop_edge_index
        got = last_gru_state(gru, feat[src], dst, batch.num_nodes)
        want = naive_last_states(gru, feat, batch.eop_edge_index)
    assert torch.bincount(batch.eop_edge_index[1]).max() >= 2  # some node hears several messages
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_eopa_respects_message_order():
    torch.manual_seed(2)
    layer = EOPA(8, 8, feat_drop=0.0).eval()
    feat = torch.randn(5, 8)
    in_time_order = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 2]])
    reversed_for_node0 = torch.tensor([[3, 2, 1, 4], [0, 0, 0, 2]])
    other_nodes_interleaved = torch.tensor([[1, 4, 2, 3], [0, 2, 0, 0]])  # node 0 still hears 1, 2, 3
    with torch.no_grad():
        base = layer(feat, in_time_order)
        rev = layer(feat, reversed_for_node0)
        mixed = layer(feat, other_nodes_interleaved)
    assert not torch.allclose(base[0], rev[0], atol=1e-4)  # the GRU reads the order
    torch.testing.assert_close(base[1:], rev[1:])
    torch.testing.assert_close(base, mixed)  # only each node's own order matters


def test_sgat_attention_sums_to_one_per_destination(tiny):
    torch.manual_seed(3)
    batch = collate_examples(tiny.train, np.arange(40), tiny.n_items, extra=("shortcut",))
    layer = SGAT(8, 8, 8, feat_drop=0.0)
    x = torch.randn(batch.num_nodes, 8)
    a = layer.attention(x, batch.sc_edge_index)
    total = scatter(a, batch.sc_edge_index[1], dim=0, dim_size=batch.num_nodes, reduce="sum")
    torch.testing.assert_close(total, torch.ones(batch.num_nodes))
    assert (a > 0).all()


def test_sgat_matches_a_per_destination_loop(tiny):
    torch.manual_seed(4)
    batch = collate_examples(tiny.train, np.arange(50, 70), tiny.n_items, extra=("shortcut",))
    layer = SGAT(8, 6, 8, feat_drop=0.0).eval()
    x = torch.randn(batch.num_nodes, 8)
    with torch.no_grad():
        got = layer(x, batch.sc_edge_index)
        xn = layer.batch_norm(x)
        q, k, v = layer.fc_q(xn), layer.fc_k(xn), layer.fc_v(xn)
        src, dst = batch.sc_edge_index
        want = torch.zeros(batch.num_nodes, 8)
        for node in range(batch.num_nodes):
            senders = src[dst == node]  # u -> node: u clicked at or before node
            e = layer.fc_e(torch.sigmoid(q[senders] + k[node])).squeeze(-1)
            want[node] = (torch.softmax(e, 0).unsqueeze(-1) * v[senders]).sum(0)
        want = layer.activation(want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lessr_renormalises_without_mutating_the_table(tiny):
    model, _ = built("lessr", tiny)
    assert model.embedding.weight.norm(dim=1).max() <= 1.0 + 1e-5  # init projects the rows once
    with torch.no_grad():
        model.embedding.weight.mul_(3.0)  # as if training had pushed rows past max_norm
    before = model.embedding.weight.detach().clone()
    batch = batch_of(model, tiny.train, np.arange(30), tiny.n_items)
    enc = model.encode(batch)
    assert torch.equal(model.embedding.weight.detach(), before)
    assert enc.items.norm(dim=1).max() <= 1.0 + 1e-5
    assert enc.node_h.shape[1] == 16 * 5  # DenseNet concat: d * (num_layers + 1)


# ---------------------------------------------------------------- DHCN internals


def dense_operator(hyperedges, n_items):
    h = np.zeros((n_items, len(hyperedges)))
    for e, items in enumerate(hyperedges):
        for i in set(items):
            h[i - 1, e] = 1.0
    d = h.sum(1)
    inv_d = np.where(d > 0, 1.0 / np.maximum(d, 1e-12), 0.0)
    return np.diag(inv_d) @ h @ np.diag(1.0 / h.sum(0)) @ h.T


TOY = [[1, 2, 3], [2, 3, 3, 4], [4, 5]]  # item 6 never appears in training


def test_hypergraph_operator_matches_dense_formula():
    train = Split.all_prefixes(Sessions.from_lists(TOY))
    for mode, hyperedges in (("sessions", TOY),
                             ("prefixes", [[1], [1, 2], [2], [2, 3], [2, 3, 3], [4]])):
        a = hypergraph_operator(*hyperedge_items(train, mode), n_items=6).toarray()
        np.testing.assert_allclose(a, dense_operator(hyperedges, 6), atol=1e-12)
        assert not a[5].any()  # an item outside the training data has no neighbours
    a = dense_operator(TOY, 6)
    np.testing.assert_allclose(a[:5].sum(1), 1.0)  # rows of D^-1 H B^-1 H^T are stochastic


def test_dhcn_convolution_is_the_layer_mean_of_powers():
    train = Split.all_prefixes(Sessions.from_lists(TOY))
    model, _ = build_model("dhcn", 6, {"dim": 4})
    model.prepare(train)
    a = torch.tensor(dense_operator(TOY, 6), dtype=torch.float32)
    x = model.embedding.weight[1:].detach()
    want = (x + a @ x + a @ a @ x + a @ a @ a @ x) / 4
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.convolved_items(model.embedding.weight), want)


def test_dhcn_propagation_and_its_gradient_match_the_operator():
    # A x runs on A's CSR with rows and columns reordered for locality, the backward on A^T's (a pattern
    # of its own once `hyper_min_weight` prunes A). Both must equal the documented operator A.
    train = Split.all_prefixes(Sessions.from_lists(TOY))
    for overrides in ({"hyperedges": "sessions"}, {"hyperedges": "prefixes"}, {"hyper_min_weight": 0.2}):
        model, _ = build_model("dhcn", 6, {"dim": 4, **overrides})
        model.prepare(train)
        a = model.encoder.operator().to_dense()
        want = hypergraph_operator(*hyperedge_items(train, overrides.get("hyperedges", "sessions")), n_items=6,
                                   min_weight=overrides.get("hyper_min_weight", 0.0)).toarray()
        torch.testing.assert_close(a, torch.tensor(want, dtype=torch.float32))  # the reordered CSR is A
        x = torch.randn(6, 4, requires_grad=True)
        upstream = torch.randn(6, 4)
        y = model.encoder.propagate(x)
        torch.testing.assert_close(y, a @ x)
        (grad,) = torch.autograd.grad(y, x, upstream)
        torch.testing.assert_close(grad, a.t() @ upstream)
    assert not torch.equal(a, a.t())  # the pruned operator: A^T is not A


@pytest.mark.parametrize("layers,layer_pool,min_weight", [(3, "mean", 0.0), (2, "sum", 0.0), (1, "mean", 0.2),
                                                         (0, "mean", 0.0)])
def test_dhcn_convolution_gradient_is_the_transposed_layer_pool(layers, layer_pool, min_weight):
    # One autograd Function for all layers, its backward in Horner form: the weight's gradient must be
    # c * sum_k (A^T)^k g on the item rows and zero on the padding row 0.
    train = Split.all_prefixes(Sessions.from_lists(TOY))
    model, _ = build_model("dhcn", 6, {"dim": 4, "layers": layers, "layer_pool": layer_pool,
                                       "hyper_min_weight": min_weight})
    model.prepare(train)
    a = model.encoder.operator().to_dense()
    weight = torch.randn(7, 4, requires_grad=True)
    upstream = torch.randn(6, 4)
    powers = [torch.linalg.matrix_power(a, k) for k in range(layers + 1)]
    c = 1 / (layers + 1) if layer_pool == "mean" else 1.0
    x_h = model.encoder.convolved_items(weight)
    torch.testing.assert_close(x_h, c * sum(p @ weight[1:].detach() for p in powers))
    (grad,) = torch.autograd.grad(x_h, weight, upstream)
    torch.testing.assert_close(grad[1:], c * sum(p.t() @ upstream for p in powers))
    assert not grad[0].any()


def test_dhcn_hypergraph_comes_from_training_data_only(tiny):
    # A small training part (the first 60 sessions) so that many valid/test items are unseen in it.
    ds = dataclasses.replace(tiny, train=Split.all_prefixes(tiny.train.sessions.subset(np.arange(60))))
    model, _ = built("dhcn", ds)
    a = model.encoder.operator().to_dense()
    train_items = np.unique(ds.train.sessions.items)
    has_row = np.flatnonzero(a.abs().sum(1).numpy() > 0) + 1
    np.testing.assert_array_equal(has_row, train_items)
    unseen = np.setdiff1d(np.unique(np.concatenate([ds.valid.sessions.items, ds.test.sessions.items])),
                          train_items)
    assert unseen.size > 0  # the check below means something
    assert not a[unseen - 1].any()
    # Another test split (here: the full training split) leaves the operator unchanged.
    other, _ = built("dhcn", dataclasses.replace(ds, test=tiny.train))
    assert torch.equal(other.encoder.operator().to_dense(), a)


def test_dhcn_readout_matches_a_per_session_reversed_computation(tiny):
    model, _ = built("dhcn", tiny)
    model.eval()
    batch = batch_of(model, tiny.test, np.arange(100, 130), tiny.n_items)
    with torch.no_grad():
        enc = model.encode(batch)
        got = model.readout(enc, batch)
        ro = model.readout
        for i in range(batch.num_graphs):
            x = enc.h[enc.pos_batch == i].flip(0)  # reversed session: row 0 = last click
            p = ro.pos_embedding.weight[: len(x)]
            z = torch.tanh(ro.w1(torch.cat([p, x], dim=-1)))
            beta = ro.w2(torch.sigmoid(ro.glu1(z) + ro.glu2(x.mean(0))))
            torch.testing.assert_close(got[i], (beta * x).sum(0), rtol=1e-5, atol=1e-6)


def test_dhcn_line_graph_uses_jaccard_overlaps(tiny):
    model, _ = built("dhcn", tiny)
    index = np.arange(600, 612)
    batch = batch_of(model, tiny.train, index, tiny.n_items)
    w = model.embedding.weight.detach()
    sets = [set(tiny.train.prefix(i).tolist()) for i in index]
    jac = torch.tensor([[len(a & b) / len(a | b) for b in sets] for a in sets])
    propagate = jac / jac.sum(1, keepdim=True)
    theta = torch.stack([w[torch.from_numpy(tiny.train.prefix(i))].mean(0) for i in index])
    want = (theta + propagate @ theta + propagate @ propagate @ theta
            + propagate @ propagate @ propagate @ theta) / 4
    torch.testing.assert_close(model.encoder.line_graph_sessions(batch, w), want, rtol=1e-5, atol=1e-6)
    assert (jac - torch.eye(len(index))).abs().sum() > 0  # the sessions do overlap


def test_dhcn_refuses_to_run_before_prepare(tiny):
    model, _ = build_model("dhcn", tiny.n_items, {"dim": 8})
    with pytest.raises(RuntimeError, match="prepare"):
        model(batch_of(model, tiny.train, np.arange(4), tiny.n_items))


def test_dhcn_line_graph_only_in_training_and_never_in_scores(tiny):
    model, _ = built("dhcn", tiny)
    index = np.arange(500, 540)
    model.train()
    batch = batch_of(model, tiny.train, index, tiny.n_items)
    s, _, enc = model.session_repr(batch)
    assert enc.aux_loss is not None and "line" in enc.extras
    with torch.no_grad():  # DHCN has no dropout/BatchNorm: even training scores ignore the batch
        together = model(batch)
        alone = model(batch_of(model, tiny.train, index[7:8], tiny.n_items))
    torch.testing.assert_close(alone[0], together[7], rtol=1e-5, atol=1e-5)
    model.eval()
    enc = model.session_repr(batch)[2]
    assert enc.aux_loss is None and "line" not in enc.extras


# ---------------------------------------------------------------- training beats popularity


@pytest.mark.parametrize("name,overrides", [("lessr", {"batch_size": 128}), ("dhcn", {})])
def test_short_training_beats_popularity(name, overrides, tiny):
    pop = popularity_hr20(tiny)
    hr = trained_hr20(name, tiny, 4, dim=32, **overrides)
    print(f"{name}: HR@20 {100 * hr:.2f} vs popularity {100 * pop:.2f}")
    assert hr > pop + 0.02
