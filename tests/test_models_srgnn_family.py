"""SR-GNN, GC-SAN and SGNN-HN: shapes, batching/permutation invariance, gradients, Figure-2 groups, each
model's equations against a dense one-session hand computation (SR-GNN with its A_in/A_out matrices),
GC-SAN's padding mask, compatibility variants, and a short training run that beats popularity."""

import numpy as np
import pytest
import torch

from helpers import popularity_hr20, trained_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Split
from sbr_bench.models.registry import build_model
from conftest import shared_path

MODELS = ["srgnn", "gcsan", "sgnnhn"]


def small_model(name, n_items, **overrides):
    torch.manual_seed(0)
    model, cfg = build_model(name, n_items, {"dim": 16, **overrides})
    return model, cfg


def mixed_index(split, n=12):
    """Examples with short and long prefixes, so batches carry padding for per-session blocks."""
    order = np.argsort(split.ex_len, kind="stable")
    return np.concatenate([order[:n // 2], order[-(n - n // 2):]])


@pytest.mark.parametrize("name", MODELS)
def test_output_shape(tiny, name):
    model, _ = small_model(name, tiny.n_items)
    batch = collate_examples(tiny.train, np.arange(7), tiny.n_items)
    scores = model(batch)
    assert scores.shape == (7, tiny.n_items)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", MODELS)
def test_scores_do_not_depend_on_the_rest_of_the_batch(tiny, name):
    model, _ = small_model(name, tiny.n_items)
    model.eval()
    index = mixed_index(tiny.train)
    with torch.no_grad():
        together = model(collate_examples(tiny.train, index, tiny.n_items))
        for row, i in enumerate(index):
            alone = model(collate_examples(tiny.train, [i], tiny.n_items))
            torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=0)


COMPAT_VARIANTS = [
    ("srgnn", {"nonhybrid": True}), ("srgnn", {"gate_flip_compat": True, "edge_count_weights": True}),
    ("gcsan", {"share_blocks_compat": True, "heads": 2}),
    ("sgnnhn", {"star_gate_softmax_compat": True}),
    ("sgnnhn", {"star_plain_dot_compat": True, "forward_positions_compat": True, "highway": False}),
    ("sgnnhn", {"scorer": "cosine", "step": 3}),
]


@pytest.mark.parametrize("name,overrides", COMPAT_VARIANTS)
def test_variants_are_batch_invariant_and_fully_trained(tiny, name, overrides):
    model, _ = small_model(name, tiny.n_items, **overrides)
    index = mixed_index(tiny.train)
    model.eval()
    with torch.no_grad():
        together = model(collate_examples(tiny.train, index, tiny.n_items))
        alone = torch.stack([model(collate_examples(tiny.train, [i], tiny.n_items))[0] for i in index])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)
    model.train()
    model.loss(collate_examples(tiny.train, index, tiny.n_items))[0].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    modules = dict(model.named_modules())
    assert all(isinstance(modules[p], torch.nn.Linear) for ps in model.weight_groups().values() for p in ps)


@pytest.mark.parametrize("name", MODELS)
def test_permuting_the_batch_permutes_the_scores(tiny, name):
    model, _ = small_model(name, tiny.n_items)
    model.eval()
    index = mixed_index(tiny.train)
    perm = np.random.default_rng(1).permutation(len(index))
    with torch.no_grad():
        scores = model(collate_examples(tiny.train, index, tiny.n_items))
        permuted = model(collate_examples(tiny.train, index[perm], tiny.n_items))
    torch.testing.assert_close(permuted, scores[torch.from_numpy(perm)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(tiny, name):
    model, _ = small_model(name, tiny.n_items)
    model.train()
    loss, _ = model.loss(collate_examples(tiny.train, mixed_index(tiny.train, 32), tiny.n_items))
    loss.backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []


@pytest.mark.parametrize("name", MODELS)
def test_weight_groups_name_existing_linears(tiny, name):
    model, _ = small_model(name, tiny.n_items)
    modules = dict(model.named_modules())
    groups = model.weight_groups()
    assert {"gnn.propagation", "gnn.gate_ih", "gnn.gate_hh", "readout.query", "readout.key"} <= set(groups)
    paths = [p for ps in groups.values() for p in ps]
    assert len(paths) == len(set(paths))  # no module in two groups
    assert all(isinstance(modules[p], torch.nn.Linear) for p in paths)


def test_sgnnhn_groups_star_gates_and_highway_as_gnn_other(tiny):
    model, _ = small_model("sgnnhn", tiny.n_items)
    assert sorted(model.weight_groups()["gnn.other"]) == sorted(
        f"encoder.{n}" for n in ["gate_q", "gate_k", "star_q", "star_k", "highway"])


def srgnn_dense_reference(model, session, gate_flip=False):
    """SR-GNN's pytorch_code forward, written densely: A_in/A_out from utils.get_slice, GNNCell, readout."""
    node = np.unique(session)
    alias = [int(np.where(node == i)[0][0]) for i in session]
    n = len(node)
    u_A = np.zeros((n, n))
    for a, b in zip(alias[:-1], alias[1:]):
        u_A[a, b] = 1  # binary: repeated transitions collapse
    deg_in = u_A.sum(0)
    deg_in[deg_in == 0] = 1
    deg_out = u_A.sum(1)
    deg_out[deg_out == 0] = 1
    A_in = torch.tensor((u_A / deg_in).T, dtype=torch.float32)
    A_out = torch.tensor((u_A.T / deg_out).T, dtype=torch.float32)

    cell = model.encoder.cell
    H = model.embedding.weight[torch.from_numpy(node)]
    inp_in = A_in @ (H @ cell.edge_in.weight.T + cell.edge_in.bias) + cell.b_iah
    inp_out = A_out @ (H @ cell.edge_out.weight.T + cell.edge_out.bias) + cell.b_oah
    gi = torch.cat([inp_in, inp_out], 1) @ cell.x2h.weight.T + cell.x2h.bias
    gh = H @ cell.h2h.weight.T + cell.h2h.bias
    i_r, i_i, i_n = gi.chunk(3, 1)
    h_r, h_i, h_n = gh.chunk(3, 1)
    resetgate = torch.sigmoid(i_r + h_r)
    inputgate = torch.sigmoid(i_i + h_i)
    newgate = torch.tanh(i_n + resetgate * h_n)
    if gate_flip:
        hidden = H - inputgate * (H - newgate)  # johnny12150 / RecBole form
    else:
        hidden = newgate + inputgate * (H - newgate)  # SR-GNN form
    seq = hidden[alias]
    ro = model.readout
    ht = seq[-1]
    q1 = ht @ ro.linear_one.weight.T + ro.linear_one.bias
    q2 = seq @ ro.linear_two.weight.T + ro.linear_two.bias
    alpha = torch.sigmoid(q1 + q2) @ ro.linear_three.weight.T  # no softmax
    a = (alpha * seq).sum(0)
    a = torch.cat([a, ht]) @ ro.linear_transform.weight.T + ro.linear_transform.bias
    return hidden, a @ model.embedding.weight[1:].T


@pytest.mark.parametrize("gate_flip", [False, True])
def test_srgnn_matches_dense_reference_equations(gate_flip):
    # repeated transitions 3->1 and 1->2, a self-loop 2->2, and item 4 with no out-edge
    session = [3, 1, 2, 3, 1, 2, 2, 4]
    model, _ = small_model("srgnn", 6, gate_flip_compat=gate_flip)
    with torch.no_grad():  # non-zero post-aggregation biases, so their placement is checked too
        model.encoder.cell.b_iah.uniform_(-0.5, 0.5)
        model.encoder.cell.b_oah.uniform_(-0.5, 0.5)
    model.eval()
    batch = collate_examples(Split.from_pairs([session], [5]), [0], 6)
    with torch.no_grad():
        want_nodes, want_scores = srgnn_dense_reference(model, np.array(session), gate_flip)
        enc = model.encode(batch)
        scores = model(batch)
    torch.testing.assert_close(enc.node_h, want_nodes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[0], want_scores, atol=1e-5, rtol=1e-5)


def test_gcsan_padding_is_masked_and_the_mask_matters(tiny):
    """A short session batched with a much longer one is padded; with the mask nothing changes, and the
    unmasked compatibility mode (johnny12150) does change it, so the check can fail."""
    lengths = tiny.train.ex_len
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[long] > lengths[short] + 2
    results = {}
    for unmasked in (False, True):
        model, _ = small_model("gcsan", tiny.n_items, attn_unmasked_compat=unmasked)
        model.eval()
        with torch.no_grad():
            alone = model(collate_examples(tiny.train, [short], tiny.n_items))[0]
            padded = model(collate_examples(tiny.train, [short, long], tiny.n_items))[0]
        results[unmasked] = (alone - padded).abs().max().item()
    assert results[False] < 1e-5
    assert results[True] > 1e-4


@pytest.mark.parametrize("overrides", [{}, {"heads": 2, "blocks": 3}, {"blocks": 1}, {"share_blocks_compat": True}])
def test_gcsan_packed_readout_matches_the_dense_block_computation(tiny, overrides):
    """The readout runs its per-position layers on packed positions and the last block for the last click
    only; the straightforward form runs everything on the padded [B, T, d] block. Same values and grads."""
    model, _ = small_model("gcsan", tiny.n_items, **overrides)
    model.eval()
    lengths = tiny.train.ex_len
    index = np.concatenate([[int(np.argmin(lengths)), int(np.argmax(lengths))], np.arange(40, 60)])
    batch = collate_examples(tiny.train, index, tiny.n_items)
    assert len(set(batch.length.tolist())) > 3  # sessions of many lengths, so there is padding
    results = []
    for forward in (model.readout.forward, lambda enc, b: model.readout.forward_dense(enc)):
        enc = model.encode(batch)
        s = forward(enc, batch)
        params = [p for p in model.readout.parameters()]
        results.append((s, torch.autograd.grad(s.pow(2).sum(), params)))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_gcsan_shared_blocks_compat_has_one_block(tiny):
    shared, _ = small_model("gcsan", tiny.n_items, share_blocks_compat=True)
    separate, _ = small_model("gcsan", tiny.n_items)
    assert len(shared.readout.blocks) == 1 and len(separate.readout.blocks) == 4
    assert shared(collate_examples(tiny.train, np.arange(4), tiny.n_items)).shape == (4, tiny.n_items)


def test_sgnnhn_star_is_an_attention_pool_of_the_session_nodes(tiny):
    """The star is a convex combination of the session's (pre-highway) satellite states: with one
    node per session (a single click) it equals that node's state after the gate."""
    model, _ = small_model("sgnnhn", tiny.n_items, highway=False, step=1)
    model.eval()
    one_click = np.flatnonzero(tiny.train.ex_len == 1)[:5]
    with torch.no_grad():
        enc = model.encode(collate_examples(tiny.train, one_click, tiny.n_items))
    torch.testing.assert_close(enc.extras["star"], enc.node_h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_short_training_beats_popularity(tiny, name):
    # lr 1e-2 (not the reference 1e-3) so that 3 epochs on the tiny set are enough to learn the concepts.
    hr = trained_hr20(name, tiny, 3, dim=32, lr=1e-2, batch_size=100)
    pop = popularity_hr20(tiny)
    print(f"{name}: test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_training_on_synthetic_small_beats_popularity(name):
    from sbr_bench.data.synthetic import synthetic_dataset

    data = synthetic_dataset("small", seed=0)
    hr = trained_hr20(name, data, 3, dim=64, lr=3e-3)
    pop = popularity_hr20(data)
    print(f"{name} (small): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_training_on_real_diginetica_sample_beats_popularity(name):
    """SR-GNN's own preprocessed Diginetica sample (309 items, 1,205 train / 99 test pairs)."""
    import pickle
    from types import SimpleNamespace

    folder = shared_path("diginetica/srgnn_protocol_on_raw_sample")
    with open(folder / "train.txt", "rb") as f:
        train = Split.from_pairs(*pickle.load(f))
    with open(folder / "test.txt", "rb") as f:
        test = Split.from_pairs(*pickle.load(f))
    n_items = int(max(train.sessions.items.max(), test.sessions.items.max()))
    data = SimpleNamespace(train=train, valid=test, test=test, n_items=n_items)  # no validation split here
    hr = trained_hr20(name, data, 10, dim=64, lr=3e-3, batch_size=50)
    pop = popularity_hr20(data)
    print(f"{name} (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop


def test_sgnnhn_matches_dense_reference_equations():
    """One session, written out per node with plain tensors: star init, gated satellites, star attention,
    highway, reversed positions, star-aware soft attention, layer-normalised scores × τ."""
    session = [3, 1, 2, 3, 1, 2, 2, 4]
    model, cfg = small_model("sgnnhn", 6, step=2)
    model.eval()
    batch = collate_examples(Split.from_pairs([session], [5]), [0], 6)
    enc_m, ro = model.encoder, model.readout
    d = cfg["dim"]
    with torch.no_grad():
        node = np.unique(session)
        alias = [int(np.where(node == i)[0][0]) for i in session]
        h0 = model.embedding.weight[torch.from_numpy(node)]
        star = h0.mean(0)
        h = h0
        for _ in range(2):
            h_hat = enc_m.cell(h, batch.edge_index)  # the cell itself is checked against SR-GNN above
            alpha = torch.sigmoid((h_hat @ enc_m.gate_q.weight.T) @ (enc_m.gate_k.weight @ star) / d ** 0.5)
            h = (1 - alpha[:, None]) * h_hat + alpha[:, None] * star
            beta = torch.softmax((h @ enc_m.star_k.weight.T) @ (enc_m.star_q.weight @ star) / d ** 0.5, 0)
            star = (beta[:, None] * h).sum(0)
        g = torch.sigmoid(torch.cat([h0, h], 1) @ enc_m.highway.weight.T)
        hf = g * h0 + (1 - g) * h
        n = len(session)
        u = hf[alias] + ro.position.weight[torch.arange(n - 1, -1, -1)]
        z_r = u[-1]
        pre = ro.linear_one(z_r) + ro.linear_two(u) + ro.linear_three(star)
        z_g = (ro.linear_four(torch.sigmoid(pre)) * u).sum(0)
        z_h = ro.linear_transform(torch.cat([z_g, z_r]))

        def ln(x):
            x = x - x.mean(-1, keepdim=True)
            return x / x.norm(dim=-1, keepdim=True)

        want = 12.0 * ln(z_h) @ ln(model.embedding.weight[1:]).T
        enc = model.encode(batch)
        got = model(batch)[0]
    torch.testing.assert_close(enc.extras["star"][0], star, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.node_h, hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_gcsan_matches_dense_reference_equations():
    """One session, 2 blocks of single-head attention + residual FFN, then ω-mix with the last GNN state."""
    session = [3, 1, 2, 3, 1, 4]
    model, cfg = small_model("gcsan", 6, blocks=2)
    model.eval()
    batch = collate_examples(Split.from_pairs([session], [5]), [0], 6)
    with torch.no_grad():
        enc = model.encode(batch)
        x = enc.h
        for block in model.readout.blocks:
            q, k, v = block.q(x), block.k(x), block.v(x)
            f = torch.softmax(q @ k.T / cfg["dim"] ** 0.5, -1) @ v
            x = f + block.ffn_out(torch.relu(block.ffn_in(f)))
        s = 0.52 * x[-1] + 0.48 * enc.h[-1]
        want = s @ model.embedding.weight[1:].T
        got = model(batch)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sgnnhn_readout_needs_a_star_encoder(tiny):
    from sbr_bench.errors import UserError

    model, _ = small_model("srgnn+sgnnhn", tiny.n_items)
    with pytest.raises(UserError, match="star"):
        model(collate_examples(tiny.train, np.arange(3), tiny.n_items))
