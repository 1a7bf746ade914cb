"""sbr_bench.nn: readouts as PyG Aggregations compute exactly what the readouts compute."""

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv

from sbr_bench.data.graphs import collate_examples
from sbr_bench.data.synthetic import synthetic_dataset
from sbr_bench.models.registry import build_model
from sbr_bench.nn import ReadoutAggregation

POSITION_READOUTS = ["srgnn", "gcsan", "narm", "dhcn", "attenmixer", "attenmixer-LI", "attenmixer-IP"]


@pytest.fixture(scope="module")
def tiny():
    return synthetic_dataset("tiny")


@pytest.mark.parametrize("name", POSITION_READOUTS)
def test_aggregation_equals_the_readout(tiny, name):
    torch.manual_seed(0)
    model, _ = build_model(name, tiny.n_items, {"dim": 16, "heads": 4} if "attenmixer" in name else {"dim": 16})
    model.eval()
    extra = tuple(getattr(model, "extra_graphs", ()))
    if hasattr(model.encoder, "prepare"):
        model.encoder.prepare(tiny.train)
    batch = collate_examples(tiny.test, list(range(64)), tiny.n_items, extra)
    with torch.no_grad():
        enc = model.encoder(batch, model.embedding)
        expected = model.readout(enc, batch)
        aggr = ReadoutAggregation(model.readout)
        by_index = aggr(enc.h, enc.pos_batch)
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(enc.length, 0)])
        by_ptr = aggr(enc.h, ptr=ptr)
    torch.testing.assert_close(by_index, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(by_ptr, expected, atol=1e-6, rtol=1e-6)


def test_aggregation_is_a_graph_readout_in_a_pyg_model():
    """Atten-Mixer's readout after a GCN over ordinary PyG graphs, trained end to end."""
    torch.manual_seed(0)
    readout, _ = build_model("attenmixer", 10, {"dim": 8, "heads": 2})
    aggr = ReadoutAggregation(readout.readout)
    conv = GCNConv(8, 8)
    graphs = [Data(x=torch.randn(n, 8), edge_index=torch.tensor([list(range(n - 1)), list(range(1, n))]))
              for n in (3, 5, 2)]
    batch = Batch.from_data_list(graphs)
    out = aggr(conv(batch.x, batch.edge_index), batch.batch)
    assert out.shape == (3, 8)
    out.sum().backward()
    assert conv.lin.weight.grad is not None and readout.readout.w_q.weight.grad is not None
    # each graph's vector depends on its own rows only (eval mode: no dropout)
    readout.eval()
    out = aggr(conv(batch.x, batch.edge_index), batch.batch)
    moved = batch.x.clone()
    moved[batch.batch == 2] += 1.0
    again = aggr(conv(moved, batch.edge_index), batch.batch)
    torch.testing.assert_close(again[:2], out[:2])
    assert not torch.allclose(again[2], out[2])


def test_readouts_that_need_the_session_graph_are_refused():
    for name in ("lessr", "sgnnhn"):
        model, _ = build_model(name, 10, {"dim": 8})
        with pytest.raises(ValueError, match="cannot be used as an aggregation"):
            ReadoutAggregation(model.readout)


# ---------------------------------------------------------------- MessagePassing layers vs the old modules

import legacy_layers  # noqa: E402  (tests/legacy_layers.py: the layers as they were)
from torch_geometric.nn import MessagePassing  # noqa: E402

from sbr_bench.nn import EOPAConv, GatedSessionConv, SGATConv  # noqa: E402


def _graph(tiny, extra):
    batch = collate_examples(tiny.train, list(range(200, 260)), tiny.n_items, extra)
    return batch, torch.randn(batch.num_nodes, 8)


def _same(new, old, *inputs):
    """Same weights, same outputs and gradients, in eval and in train mode (BatchNorm's two paths)."""
    assert isinstance(new, MessagePassing)
    new.load_state_dict(old.state_dict())  # same parameter names: checkpoints carry over
    for training in (False, True):
        new.train(training), old.train(training)
        _same_pass(new, old, *inputs)


def _same_pass(new, old, *inputs):
    new.zero_grad(), old.zero_grad()
    out_new, out_old = new(*inputs), old(*inputs)
    torch.testing.assert_close(out_new, out_old, atol=1e-6, rtol=1e-6)
    out_new.square().sum().backward()
    out_old.square().sum().backward()
    for (name, p), q in zip(new.named_parameters(), old.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("flip, counts", [(False, False), (True, False), (False, True)])
def test_gated_session_conv_equals_the_old_cell(tiny, flip, counts):
    torch.manual_seed(0)
    batch, h = _graph(tiny, ())
    old = legacy_layers.GatedSessionCell(8, flip, counts)
    _same(GatedSessionConv(8, flip, counts), old, h, batch.edge_index, batch.edge_count)


def test_eopa_conv_equals_the_old_eopa(tiny):
    torch.manual_seed(0)
    batch, x = _graph(tiny, ("eop",))
    _same(EOPAConv(8, 8), legacy_layers.EOPA(8, 8, 0.0), x, batch.eop_edge_index)


def test_sgat_conv_equals_the_old_sgat(tiny):
    torch.manual_seed(0)
    batch, x = _graph(tiny, ("shortcut",))
    _same(SGATConv(8, 6, 8), legacy_layers.SGAT(8, 6, 8, 0.0), x, batch.sc_edge_index)
