import numpy as np
import torch
from torch_geometric.loader import DataLoader

from sbr_bench.data.graphs import ExampleLoader, SessionGraphDataset, collate_examples
from sbr_bench.data.sessions import Sessions, Split

KEYS = ["x", "edge_index", "edge_count", "alias", "alias_batch", "last", "length", "y", "batch", "ptr",
        "eop_edge_index", "sc_edge_index"]


def small_split():
    return Split.all_prefixes(Sessions.from_lists([[5, 3, 5, 2], [1, 2], [4, 4, 4, 1, 7], [2, 6]]))


def test_single_graph_structure():
    split = Split.from_pairs([[5, 3, 5, 2]], [9])
    g = collate_examples(split, [0], extra=("eop", "shortcut"))
    assert g.x.tolist() == [2, 3, 5]  # unique items, sorted
    assert g.alias.tolist() == [2, 1, 2, 0]  # position -> node
    # transitions 5->3, 3->5, 5->2 between nodes, de-duplicated and counted
    assert g.edge_index.t().tolist() == [[1, 2], [2, 0], [2, 1]]
    assert g.edge_count.tolist() == [1, 1, 1]
    assert g.eop_edge_index.t().tolist() == [[2, 1], [1, 2], [2, 0]]  # time order
    assert g.last.tolist() == [3] and g.y.tolist() == [9] and g.length.tolist() == [4]
    # shortcut: every (i <= j) position pair, self-loops included, de-duplicated over nodes
    pairs = {(a, b) for i, a in enumerate([2, 1, 2, 0]) for b in [2, 1, 2, 0][i:]}
    assert set(map(tuple, g.sc_edge_index.t().tolist())) == pairs


def test_repeated_transition_is_counted():
    g = collate_examples(Split.from_pairs([[1, 2, 1, 2]], [3]), [0])
    assert g.edge_index.t().tolist() == [[0, 1], [1, 0]]
    assert g.edge_count.tolist() == [2, 1]


def test_vectorised_collate_equals_pyg_dataloader():
    split = small_split()
    fast = collate_examples(split, np.arange(len(split)), 7, extra=("eop", "shortcut"))
    ds = SessionGraphDataset(split, 7, extra=("eop", "shortcut"))
    slow = next(iter(DataLoader(ds, batch_size=len(split))))
    for k in KEYS:
        assert torch.equal(fast[k], slow[k]), k
    assert fast.num_graphs == slow.num_graphs == len(split)


def test_batch_offsets_point_into_own_graph():
    split = small_split()
    b = collate_examples(split, np.arange(len(split)))
    assert torch.equal(b.batch[b.alias], b.alias_batch)
    assert torch.equal(b.alias_batch[b.last], torch.arange(len(split)))
    assert torch.equal(b.x[b.alias[b.last]], torch.from_numpy(np.array([s[-1] for s in split.pairs()[0]])))
    assert torch.equal(b.batch[b.edge_index[0]], b.batch[b.edge_index[1]])


def test_loader_shuffles_deterministically_and_covers_everything(tiny):
    loader = ExampleLoader(tiny.train, 64, tiny.n_items, shuffle=True, seed=3)
    seen = torch.cat([b.example_index for b in loader.batches(epoch=1)])
    assert sorted(seen.tolist()) == list(range(len(tiny.train)))
    again = torch.cat([b.example_index for b in loader.batches(epoch=1)])
    assert torch.equal(seen, again)
    assert not torch.equal(seen, torch.cat([b.example_index for b in loader.batches(epoch=2)]))
    resumed = torch.cat([b.example_index for b in loader.batches(epoch=1, start_batch=3)])
    assert torch.equal(resumed, seen[3 * 64 :])


def test_training_loader_never_yields_a_single_example_batch():
    split = small_split()  # 9 examples
    sizes = [b.num_graphs for b in ExampleLoader(split, 8, 7, shuffle=True).batches(0)]
    assert sizes == [9]
    assert [b.num_graphs for b in ExampleLoader(split, 8, 7).batches(0)] == [8, 1]  # evaluation: exact
    assert len(ExampleLoader(split, 8, 7, shuffle=True)) == 1
