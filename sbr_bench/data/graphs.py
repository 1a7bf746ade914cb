"""Session graphs as PyG `Data`, and a vectorised collate that builds a whole `Batch` at once.

A session prefix [v1..vk] becomes one graph:
- `x`            [nodes] item id of each unique item (nodes sorted by item id, like SR-GNN's np.unique);
- `edge_index`   [2, E] directed transitions v_t -> v_{t+1} between nodes, de-duplicated, sorted by (src, dst);
- `edge_count`   [E] how often each transition occurs (float);
- `alias`        [positions] node of each position, in click order;
- `alias_batch`  [positions] graph of each position;
- `last`         [1] index (into the positions) of the last click;
- `length`       [1] number of clicks k;
- `y`            [1] the target item;
and, only when asked for (LESSR):
- `eop_edge_index` [2, k-1] every transition in time order, duplicates kept (edge order = time order);
- `sc_edge_index`  shortcut edges (i -> j for every pair of positions i <= j, self-loops included),
  de-duplicated, sorted by (src, dst).

Batching offsets `alias`, `*edge_index` by the node count, `last` by the position count, and
`alias_batch` by one per graph, so a `Batch` looks exactly like one big graph (PyG convention).
`collate_examples` builds the same `Batch` in a few numpy calls for any number of examples (used for
training: no per-example Python work); `SessionGraphDataset` + `torch_geometric.loader.DataLoader`
is the per-example path, and tests check both give identical batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.data import Dataset as PygDataset

from .sessions import Split, slice_gather

EXTRA_GRAPHS = ("eop", "shortcut")


class SessionGraph(Data):
    def __inc__(self, key, value, *args, **kwargs):
        if key == "alias" or key.endswith("edge_index"):
            return self.num_nodes
        if key == "last":
            return self.alias.numel()
        if key == "alias_batch":
            return 1
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key, value, *args, **kwargs):
        if key.endswith("edge_index"):
            return 1
        return 0


def _positions(split: Split, index: np.ndarray):
    """Flat item array of the prefixes of examples `index`, the example of each position, and targets."""
    lengths = split.ex_len[index]
    starts = split.sessions.offsets[split.ex_seq[index]]
    gather, pos_ptr = slice_gather(starts, lengths)
    items = split.sessions.items[gather]
    targets = split.sessions.items[starts + lengths]
    pos_batch = np.repeat(np.arange(len(index), dtype=np.int64), lengths)
    return items, pos_batch, pos_ptr, lengths, targets


def _shortcut_pairs(pos_ptr: np.ndarray, lengths: np.ndarray):
    """All position pairs (i, j), i <= j, within each example, as flat position indices.
    Vectorised per distinct prefix length (there are few): the upper triangle of a k x k grid."""
    src, dst = [], []
    for k in np.unique(lengths):
        base = pos_ptr[:-1][lengths == k]
        i, j = np.triu_indices(int(k))
        src.append((base[:, None] + i).ravel())
        dst.append((base[:, None] + j).ravel())
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src), np.concatenate(dst)


def _unique_edges(src: np.ndarray, dst: np.ndarray, n_nodes: int):
    key = src * max(n_nodes, 1) + dst
    uniq, counts = np.unique(key, return_counts=True)
    return uniq // max(n_nodes, 1), uniq % max(n_nodes, 1), counts


def collate_examples(split: Split, index, n_items: int | None = None, extra=()) -> Batch:
    """Build the PyG `Batch` of session graphs for examples `index` of `split`, vectorised."""
    index = np.asarray(index, dtype=np.int64)
    items, pos_batch, pos_ptr, lengths, targets = _positions(split, index)
    stride = int(items.max(initial=0)) + 1 if n_items is None else n_items + 1
    node_key, alias = np.unique(pos_batch * stride + items, return_inverse=True)
    alias = alias.reshape(-1)
    node_batch = node_key // stride
    n_nodes = len(node_key)

    same = pos_batch[:-1] == pos_batch[1:]
    t_src, t_dst = alias[:-1][same], alias[1:][same]
    src, dst, counts = _unique_edges(t_src, t_dst, n_nodes)

    B = len(index)
    nodes_per_graph = np.bincount(node_batch, minlength=B)
    ptr = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(nodes_per_graph, out=ptr[1:])

    t = torch.from_numpy
    batch = Batch(
        x=t(node_key % stride),
        edge_index=t(np.stack([src, dst])),
        edge_count=t(counts.astype(np.float32)),
        alias=t(alias),
        alias_batch=t(pos_batch),
        last=t(pos_ptr[1:] - 1),
        length=t(lengths.copy()),
        y=t(np.ascontiguousarray(targets)),
        batch=t(node_batch),
        ptr=t(ptr),
    )
    batch.num_nodes = n_nodes
    if "eop" in extra:
        batch.eop_edge_index = t(np.stack([t_src, t_dst]))
    if "shortcut" in extra:
        i, j = _shortcut_pairs(pos_ptr, lengths)
        s_src, s_dst, _ = _unique_edges(alias[i], alias[j], n_nodes)
        batch.sc_edge_index = t(np.stack([s_src, s_dst]))
    unknown = set(extra) - set(EXTRA_GRAPHS)
    if unknown:
        raise ValueError(f"unknown extra graph(s) {sorted(unknown)}; known: {EXTRA_GRAPHS}")
    batch._num_graphs = B
    return batch


def session_graph(split: Split, i: int, n_items: int | None = None, extra=()) -> SessionGraph:
    """The `SessionGraph` of one example (the per-example PyG path)."""
    b = collate_examples(split, [i], n_items, extra)
    keys = ["x", "edge_index", "edge_count", "alias", "alias_batch", "last", "length", "y"]
    keys += [k for k in ("eop_edge_index", "sc_edge_index") if k in b]
    return SessionGraph(num_nodes=b.num_nodes, **{k: b[k] for k in keys})


class SessionGraphDataset(PygDataset):
    """Per-example session graphs for `torch_geometric.loader.DataLoader`."""

    def __init__(self, split: Split, n_items: int | None = None, extra=()):
        super().__init__()
        self.split, self.n_items, self.extra = split, n_items, tuple(extra)

    def len(self) -> int:
        return len(self.split)

    def get(self, idx: int) -> SessionGraph:
        return session_graph(self.split, idx, self.n_items, self.extra)


class ExampleLoader:
    """Iterates `Batch`es over a split with the vectorised collate (optionally shuffled per epoch).

    `start_batch` skips the first batches of an epoch (resuming mid-epoch with the same order). When
    shuffling (training), a last batch of a single example joins the one before: BatchNorm layers
    (LESSR) cannot normalise one example.

    With `world` > 1 (multi-process training) every rank draws the same order and yields only its
    contiguous share (`distributed.shard`) of each global batch of `batch_size` examples;
    `batch.global_size` is the global batch's size. A last batch that would leave a rank with fewer than
    two examples (training) or none (no shuffling) joins the one before."""

    def __init__(self, split: Split, batch_size: int, n_items: int, shuffle=False, seed=0, extra=(),
                 rank: int = 0, world: int = 1):
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= int(rank) < int(world):
            raise ValueError(f"rank {rank} outside a world of {world} process(es)")
        self.split, self.batch_size, self.n_items = split, int(batch_size), n_items
        self.shuffle, self.seed, self.extra = shuffle, seed, tuple(extra)
        self.rank, self.world = int(rank), int(world)
        min_share = 2 if shuffle else 1
        if self.world > 1 and min(self.batch_size, len(split)) < min_share * self.world:
            raise ValueError(f"batch size {self.batch_size} over {len(split)} examples cannot give each of "
                             f"{self.world} processes {min_share} example(s) per batch; raise the batch size "
                             "or use fewer processes")

    def _starts(self) -> list[int]:
        starts = list(range(0, len(self.split), self.batch_size))
        # Smallest last batch kept: single-process training keeps 2+ (see above); under DDP each rank's
        # share must keep that minimum (a share of one example would meet the same BatchNorm problem).
        min_last = (2 if self.shuffle else 1) * self.world
        if len(starts) > 1 and len(self.split) - starts[-1] < min_last:
            starts.pop()
        return starts + [len(self.split)]

    def __len__(self) -> int:
        return len(self._starts()) - 1

    def order(self, epoch: int = 0) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.split))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.split))

    def batches(self, epoch: int = 0, start_batch: int = 0):
        from ..distributed import shard

        order, starts = self.order(epoch), self._starts()
        for b in range(start_batch, len(starts) - 1):
            idx = order[starts[b] : starts[b + 1]]
            global_size = len(idx)
            if self.world > 1:
                idx = shard(idx, self.rank, self.world)
            batch = collate_examples(self.split, idx, self.n_items, self.extra)
            batch.example_index = torch.from_numpy(idx)
            if self.world > 1:
                batch.global_size = global_size
            yield batch

    def __iter__(self):
        return self.batches(0)
