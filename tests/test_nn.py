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
