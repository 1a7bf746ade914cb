"""Atten-Mixer readout: equations (paper and reference-compat paths) against dense per-session code,
deep-sets invariance, masking, batching, gradients, ablations, composition and a short training run."""

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import popularity_hr20, trained_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Split
from sbr_bench.errors import UserError
from sbr_bench.models.attenmixer import SPECS, AttenMixerReadout
from sbr_bench.models.base import Encoded
from sbr_bench.models.registry import build_model, resolve_names

N_ITEMS = 12
SESSIONS = [[5], [3, 7], [1, 2, 3, 4, 5, 6], [4, 4, 2]]  # length 1, length < L, length > L, a repeat
SMALL = {"dim": 8, "heads": 2}  # levels: each name's default (3; 1 for -M)


def batch_of(sessions):
    split = Split.from_pairs(sessions, [1] * len(sessions))
    return collate_examples(split, np.arange(len(sessions)), N_ITEMS)


def model_for(name="attenmixer", seed=0, **overrides):
    torch.manual_seed(seed)
    model, cfg = build_model(name, N_ITEMS, {**SMALL, **overrides})
    return model.eval(), cfg


def random_encoded(lengths, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    pos_batch = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    return Encoded(torch.randn(int(lengths.sum()), dim, generator=g), pos_batch, lengths.cumsum(0) - 1, lengths)


# ---- dense per-session re-implementations ---------------------------------------------------------

def dense_paper_scores(model, cfg, sessions):
    """Eq. 6-8 and Eq. 4-5 written out per session, with the model's weights."""
    ro, E = model.readout, model.embedding.weight
    d, H, L, p = cfg["dim"], cfg["heads"], cfg["levels"], cfg["lp_norm"]
    dh = d // H
    items = E[1:] / E[1:].norm(dim=1, keepdim=True)
    out = []
    for sess in sessions:
        h = E[torch.tensor(sess)]
        h = h / h.norm(dim=1, keepdim=True)
        n = len(sess)
        queries = []
        for l in range(1, L + 1):
            m = min(l, n)  # "for sessions shorter than L we consider all items in them"
            group = h[n - m:] if cfg["level_anchor"] == "last" else h[:m]
            agg = group.sum(0) if cfg["level_agg"] == "sum" else group.mean(0)
            queries.append(ro.level_q[l - 1](agg))
        qp, k = ro.w_q(torch.stack(queries)), ro.w_k(h)
        s = []
        for head in range(H):
            c = slice(head * dh, (head + 1) * dh)
            alpha = torch.softmax(qp[:, c] @ k[:, c].t() / math.sqrt(d), dim=1)  # [L, n]
            if cfg["level_pool"] == "lp":
                pooled = alpha.pow(p).sum(0).pow(1 / p)
            else:
                pooled = alpha.max(0).values
            s.append(pooled @ h[:, c])
        s = torch.cat(s)
        z = ro.w_m(torch.cat([s / s.norm(), h[-1]]))
        out.append(cfg["sigma"] * z @ items.t())
    return torch.stack(out)


def dense_reference_scores(model, cfg, sessions, flat):
    """The official standalone code's path (../shared/docs/reference-implementations.md §1.1 steps 2-11),
    on sessions zero-padded to T = compat_pad_len columns."""
    ro, E = model.readout, model.embedding.weight
    d, H, L, T = cfg["dim"], cfg["heads"], cfg["levels"], cfg["compat_pad_len"]
    dh = d // H
    out = []
    for sess in sessions:
        n = len(sess)
        h = F.normalize(E[torch.tensor(sess)], dim=1)
        hp = torch.zeros(T, d)
        hp[:n] = h
        # concat of h_n, h_{n-1}, ..., index clamped to -1 = the (always padding) last column
        q = torch.stack([ro.level_q[l - 1](torch.cat([hp[max(n - 1 - j, -1)] for j in range(l)]))
                         for l in range(1, L + 1)])
        q = q / q.norm(dim=0, keepdim=True)  # over the level axis
        qp, k, v = ro.w_q(q), ro.w_k(hp), ro.w_v(hp)
        if flat:
            qh, kh = qp.reshape(H, L, dh), k.reshape(H, T, dh)
        else:
            qh, kh = qp.reshape(L, H, dh).transpose(0, 1), k.reshape(T, H, dh).transpose(0, 1)
        alpha = torch.softmax(2 * torch.sigmoid(qh @ kh.transpose(1, 2)), dim=-1)  # [H, L, T], padding included
        beta = alpha.pow(4).sum(1).pow(0.25)  # [H, T]
        beta = beta.masked_fill(torch.arange(T)[None] >= n, float("-inf"))
        gamma = torch.softmax(2 * beta, dim=-1)
        a = torch.cat([gamma[hd, :n] @ v[:n, hd * dh:(hd + 1) * dh] for hd in range(H)])
        z = ro.w_m(torch.cat([ro.layernorm(a), h[-1]]))
        out.append(cfg["sigma"] * F.normalize(z, dim=0) @ F.normalize(E[1:], dim=1).t())
    return torch.stack(out)


REFERENCE_CFG = dict(level_agg="concat", level_norm_axis="levels", sigmoid_attention_compat=True, compat_pad_len=8,
                     attn_scale="none", value_proj=True, session_l2norm=False, layernorm_out=True, scorer="cosine",
                     sigma=16.0)


# ---- tests ----------------------------------------------------------------------------------------

def test_registered_names_build_and_score_all_items():
    batch = batch_of(SESSIONS)
    for name in SPECS:
        model, _ = model_for(name)
        assert model(batch).shape == (len(SESSIONS), N_ITEMS)
        loss, _ = model.train().loss(batch)
        assert torch.isfinite(loss)
    ablations = [n for n in SPECS if n != "attenmixer"]
    assert ablations and all("-" in n for n in ablations)
    assert "attenmixer" in resolve_names("all") and not set(ablations) & set(resolve_names("all"))


@pytest.mark.parametrize("variant", [{}, {"level_pool": "max"}, {"level_anchor": "first"}, {"level_agg": "mean"},
                                     {"levels": 1}])
def test_matches_dense_paper_equations(variant):
    model, cfg = model_for(**variant)
    with torch.no_grad():
        got = model(batch_of(SESSIONS))
        want = dense_paper_scores(model, cfg, SESSIONS)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flat", [False, True])
def test_reference_compat_flags_match_dense_reference(flat):
    model, cfg = model_for(levels=4, flat_view_compat=flat, **REFERENCE_CFG)
    with torch.no_grad():
        got = model(batch_of(SESSIONS))
        want = dense_reference_scores(model, cfg, SESSIONS, flat)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the flat view is not the standard split: the flag must change the result
    other, _ = model_for(levels=4, flat_view_compat=not flat, **REFERENCE_CFG)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other(batch_of(SESSIONS)), got, atol=1e-4)


def test_compat_pad_len_shorter_than_a_session_is_a_user_error():
    model, _ = model_for(**{**REFERENCE_CFG, "compat_pad_len": 3})
    with pytest.raises(UserError, match="compat_pad_len"):
        model(batch_of(SESSIONS))


def _permute_window(enc, session, window):
    """Reverse the last `window` positions of one session; everything else stays in place."""
    perm = torch.arange(enc.h.shape[0])
    last = int(enc.last[session])
    perm[last - window + 1: last + 1] = perm[last - window + 1: last + 1].flip(0)
    return Encoded(enc.h[perm], enc.pos_batch, enc.last, enc.length)


@pytest.mark.parametrize("agg", ["sum", "mean", "deepsets_mlp"])
def test_level_queries_are_invariant_to_order_inside_the_window(agg):
    ro = AttenMixerReadout(8, levels=4, heads=2, level_agg=agg).eval()
    enc = random_encoded([6, 3, 5])
    permuted = _permute_window(enc, session=0, window=3)
    with torch.no_grad():
        q, qp = ro.level_queries(enc.h, enc), ro.level_queries(permuted.h, permuted)
    torch.testing.assert_close(qp[0, 2:], q[0, 2:])  # levels >= 3 contain the whole permuted window
    torch.testing.assert_close(qp[1:], q[1:])  # other sessions untouched
    assert not torch.allclose(qp[0, 0], q[0, 0])  # level 1 (the last item) did change: the test can fail


def test_concat_levels_of_the_LI_ablation_are_order_sensitive():
    ro = AttenMixerReadout(8, levels=4, heads=2, level_agg="concat").eval()
    enc = random_encoded([6, 3, 5])
    permuted = _permute_window(enc, session=0, window=3)
    with torch.no_grad():
        q, qp = ro.level_queries(enc.h, enc), ro.level_queries(permuted.h, permuted)
    assert not torch.allclose(qp[0, 2], q[0, 2], atol=1e-5)
    torch.testing.assert_close(qp[1:], q[1:])


BATCH_VARIANTS = [{}, {"level_agg": "concat"}, {"level_anchor": "first"}, {"level_pool": "max"},
                  {**REFERENCE_CFG, "flat_view_compat": False}, {**REFERENCE_CFG, "flat_view_compat": True}]


@pytest.mark.parametrize("variant", BATCH_VARIANTS)
def test_each_session_is_independent_of_its_batch(variant):
    model, _ = model_for(**variant)
    with torch.no_grad():
        together = model(batch_of(SESSIONS))
        alone = torch.cat([model(batch_of([s])) for s in SESSIONS])
        reordered = model(batch_of(SESSIONS[::-1])).flip(0)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, reordered, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(together).all()


def _trainable_grads(model, batch):
    model.train()
    model.zero_grad()
    loss, _ = model.loss(batch)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", [{}, {"value_proj": True, "layernorm_out": True, "level_agg": "deepsets_mlp"},
                                     {"level_agg": "concat"}, REFERENCE_CFG])
def test_gradients_reach_every_parameter(variant):
    model, _ = model_for(**variant)
    grads = _trainable_grads(model, batch_of(SESSIONS * 3))
    missing = [n for n, g in grads.items() if g is None or not g.abs().sum() > 0]
    assert not missing, missing
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("mode", [True, "all"])
def test_freeze_readout_compat_leaves_attention_untrained(mode):
    model, _ = model_for(freeze_readout_compat=mode, value_proj=True, layernorm_out=True)
    grads = _trainable_grads(model, batch_of(SESSIONS * 3))
    attention = ("readout.level_q.", "readout.w_q.", "readout.w_k.", "readout.w_v.")
    transform = ("readout.w_m.", "readout.layernorm.")
    for name, grad in grads.items():
        frozen = name.startswith(attention) or (mode == "all" and name.startswith(transform))
        assert (grad is None) == frozen, name
        assert model.get_parameter(name).requires_grad == (not frozen), name


def test_ablations_change_the_output_with_the_same_weights():
    batch = batch_of(SESSIONS)
    full, _ = model_for()
    with torch.no_grad():
        ref = full(batch)
        for name in ("attenmixer-IP", "attenmixer-LP"):
            model, _ = model_for(name)
            model.load_state_dict(full.state_dict())
            assert not torch.allclose(model(batch), ref, atol=1e-5), name
    assert model_for("attenmixer-M")[1]["levels"] == 1
    li, _ = model_for("attenmixer-LI")
    assert li.readout.level_q[2].in_features == 3 * SMALL["dim"]


def test_weight_groups_name_linears():
    for variant in ({}, {"value_proj": True, "level_agg": "deepsets_mlp"}):
        model, _ = model_for(**variant)
        groups = model.weight_groups()
        assert set(groups) <= {"readout.query", "readout.key", "readout.value", "readout.transform"}
        for paths in groups.values():
            assert all(isinstance(model.get_submodule(p), torch.nn.Linear) for p in paths)
        assert ("readout.value" in groups) == bool(variant.get("value_proj"))


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="heads"):
        build_model("attenmixer", N_ITEMS, {"dim": 10, "heads": 4})
    with pytest.raises(UserError, match="level_agg"):
        build_model("attenmixer", N_ITEMS, {"level_agg": "max"})
    with pytest.raises(UserError, match="scorer"):
        build_model("attenmixer", N_ITEMS, {"dim": 8, "heads": 2, "scorer": "dot"})


@pytest.mark.skipif(importlib.util.find_spec("sbr_bench.models.srgnn") is None, reason="srgnn.py not written yet")
def test_srgnn_with_attenmixer_readout_builds_and_runs():
    model, cfg = build_model("srgnn+attenmixer", N_ITEMS, {"dim": 16, "heads": 4})
    assert isinstance(model.readout, AttenMixerReadout)
    assert cfg["levels"] == SPECS["attenmixer"].defaults.levels and cfg["sigma"] == 12.0
    loss, _ = model.loss(batch_of(SESSIONS))
    loss.backward()
    assert model(batch_of(SESSIONS)).shape == (len(SESSIONS), N_ITEMS)
    # default composition: the readout's d = 256 is carried over so that 8 heads split it
    model, cfg = build_model("srgnn+attenmixer", N_ITEMS)
    assert cfg["dim"] == 256 and model.readout.heads == 8
    assert model.eval()(batch_of(SESSIONS)).shape == (len(SESSIONS), N_ITEMS)


def test_short_training_beats_popularity(tiny):
    pop_hr = popularity_hr20(tiny)
    hr = trained_hr20("attenmixer", tiny, 5, dim=32)
    assert hr > pop_hr + 0.05, (hr, pop_hr)
