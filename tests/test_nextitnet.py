"""NextItNet: causality, a residual block against its equations, batching (padding) invariance, gradients,
bad dilations, and short training runs that beat popularity."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from helpers import assert_batching_invariant, assert_gradients_reach_every_parameter, popularity_hr20, trained_hr20
from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.sessions import Split
from sbr_bench.errors import ConfigError
from sbr_bench.models.nextitnet import ResidualBlock, causal_taps
from sbr_bench.models.registry import build_model


def nextitnet(n_items, **overrides):
    torch.manual_seed(0)
    return build_model("nextitnet", n_items, {"dim": 16, "blocks": 2, **overrides})


def test_a_residual_block_is_its_equations():
    """On packed sessions (here one of 7 clicks, one of 4), each session as the paper's dilated conv1d."""
    torch.manual_seed(0)
    block = ResidualBlock(8, 3, 2).eval()
    sessions = [torch.randn(1, 7, 8), torch.randn(1, 4, 8)]

    def causal(h, conv, rate):  # y_t = b + Σ_j W_j h_{t - (2 - j)·rate}: the conv1d of the paper, k = 3
        weight = conv.linear.weight.view(8, 3, 8).permute(0, 2, 1)  # [out, in, tap], as a Conv1d's
        return F.conv1d(F.pad(h.transpose(1, 2), (2 * rate, 0)), weight, conv.linear.bias,
                        dilation=rate).transpose(1, 2)

    def reference(x):
        h = torch.relu(F.layer_norm(causal(x, block.conv1, 2), (8,), block.norm1.weight, block.norm1.bias))
        return x + torch.relu(F.layer_norm(causal(h, block.conv2, 4), (8,), block.norm2.weight, block.norm2.bias))

    with torch.no_grad():
        packed = torch.cat([x[0] for x in sessions])
        offset = torch.cat([torch.arange(x.shape[1]) for x in sessions])
        got = block(packed, causal_taps(offset, {2, 4, 8}))
        torch.testing.assert_close(got, torch.cat([reference(x)[0] for x in sessions]))


def test_states_are_causal_and_independent_of_padding(tiny):
    """The state of click j of a session is the last state of the session's prefix of length j."""
    model, _ = nextitnet(tiny.n_items)
    model.eval()
    session = tiny.test.prefix(int(np.argmax(tiny.test.ex_len))).tolist()
    assert len(session) >= 4
    with torch.no_grad():
        full = model.encode(collate_examples(Split.from_pairs([session], [1]), [0], tiny.n_items)).h
        for j in range(1, len(session) + 1):
            short = collate_examples(Split.from_pairs([session[:j], session], [1, 1]), [0, 1], tiny.n_items)
            torch.testing.assert_close(model.encode(short).last_h[0], full[j - 1], atol=1e-5, rtol=1e-5)


def test_batching_invariance_in_eval_mode(tiny):
    assert_batching_invariant(nextitnet(tiny.n_items)[0], tiny.test, tiny.n_items)


def test_gradients_reach_every_parameter(tiny):
    assert_gradients_reach_every_parameter(nextitnet(tiny.n_items)[0], tiny.train, tiny.n_items)


def test_defaults_and_bad_dilations():
    model, cfg = build_model("nextitnet", 30)
    assert (cfg["dim"], cfg["kernel_size"], cfg["blocks"], cfg["dilations"]) == (64, 3, 5, "1,4")
    assert [b.conv1.shifts[0] // 2 for b in model.encoder.blocks] == [1, 4] * 5  # kernel 3: shifts 2r, r, 0
    assert len(model.weight_groups()["gnn.propagation"]) == 20
    with pytest.raises(ConfigError, match="model_overrides.nextitnet.dilations"):
        build_model("nextitnet", 30, {"dilations": "1,x"})


def test_short_training_beats_popularity(tiny):
    hr, pop = trained_hr20("nextitnet", tiny, 4, dim=32, blocks=2, batch_size=64, lr=3e-3), popularity_hr20(tiny)
    assert hr > pop + 0.05, (hr, pop)


def test_training_on_the_real_diginetica_sample_beats_popularity(tmp_path):
    from sbr_bench import load_dataset

    data = load_dataset(str(shared_path("diginetica/srgnn_protocol_on_raw_sample")), data_dir=str(tmp_path))
    hr = trained_hr20("nextitnet", data, 10, dim=64, blocks=2, lr=3e-3, batch_size=50)
    pop = popularity_hr20(data)
    print(f"nextitnet (diginetica sample): test HR@20 {hr:.4f} vs popularity {pop:.4f}")
    assert hr > pop
