"""Sessions and (prefix, target) examples, packed CSR-style so that 1M+ clicks stay cheap.

Conventions used across the suite:
- item ids are 1..n_items; 0 is reserved for padding and never a candidate;
- a `Sessions` object holds whole sessions in time order (by end time) as one flat item array plus offsets;
- a `Split` adds the examples: example i predicts `sessions[ex_seq[i]][ex_len[i]]` from the prefix
  `sessions[ex_seq[i]][:ex_len[i]]` (prefix augmentation, or explicit pairs from a preprocessed file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_path


def slice_gather(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the slices [starts[i], starts[i] + lengths[i]) concatenated, and the offsets
    (CSR pointer) of each slice in that flat array — one vectorised gather instead of a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    return np.repeat(np.asarray(starts, dtype=np.int64) - ptr[:-1], lengths) + np.arange(ptr[-1]), ptr


@dataclass
class Sessions:
    items: np.ndarray  # int64 [clicks], item ids 1..n_items
    offsets: np.ndarray  # int64 [n + 1]
    end_time: np.ndarray | None = None  # float64 [n], seconds; None when the layout has no times

    @classmethod
    def from_lists(cls, seqs, end_time=None) -> "Sessions":
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=int(offsets[-1]))
        times = None if end_time is None else np.asarray(end_time, dtype=np.float64)
        return cls(items, offsets, times)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i) -> np.ndarray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_lists(self) -> list[list[int]]:
        return [self[i].tolist() for i in range(len(self))]

    def subset(self, index) -> "Sessions":
        """The sessions at `index` (an int array), in that order."""
        index = np.asarray(index, dtype=np.int64)
        gather, offsets = slice_gather(self.offsets[index], self.lengths[index])
        times = None if self.end_time is None else self.end_time[index]
        return Sessions(self.items[gather], offsets, times)


@dataclass
class Split:
    sessions: Sessions
    ex_seq: np.ndarray  # int64 [examples], index of the session
    ex_len: np.ndarray  # int64 [examples], prefix length (>= 1); target sits at that position

    @classmethod
    def all_prefixes(cls, sessions: Sessions) -> "Split":
        """Prefix augmentation: ([v1..vk], v_{k+1}) for k = 1..n-1, per session in order, shortest first."""
        n_ex = np.maximum(sessions.lengths - 1, 0)
        ex_seq = np.repeat(np.arange(len(sessions), dtype=np.int64), n_ex)
        first = np.zeros(len(n_ex) + 1, dtype=np.int64)
        np.cumsum(n_ex, out=first[1:])
        ex_len = np.arange(len(ex_seq), dtype=np.int64) - np.repeat(first[:-1], n_ex) + 1
        return cls(sessions, ex_seq, ex_len)

    @classmethod
    def from_pairs(cls, prefixes, targets) -> "Split":
        """Explicit (prefix, target) pairs: each pair is stored as its own sequence prefix + [target]."""
        seqs = [list(p) + [t] for p, t in zip(prefixes, targets)]
        sessions = Sessions.from_lists(seqs)
        ex_len = sessions.lengths - 1
        return cls(sessions, np.arange(len(seqs), dtype=np.int64), ex_len)

    def __len__(self) -> int:
        return len(self.ex_seq)

    @property
    def targets(self) -> np.ndarray:
        return self.sessions.items[self.sessions.offsets[self.ex_seq] + self.ex_len]

    def prefix(self, i) -> np.ndarray:
        start = self.sessions.offsets[self.ex_seq[i]]
        return self.sessions.items[start : start + self.ex_len[i]]

    def pairs(self):
        """(prefixes as lists, targets as list), for tests and exports."""
        return [self.prefix(i).tolist() for i in range(len(self))], self.targets.tolist()

    @classmethod
    def concat(cls, first: "Split", second: "Split") -> "Split":
        """`first`'s examples followed by `second`'s, over both splits' sessions."""
        a, b = first.sessions, second.sessions
        times = None if a.end_time is None or b.end_time is None else np.concatenate([a.end_time, b.end_time])
        sessions = Sessions(np.concatenate([a.items, b.items]),
                            np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]), times)
        return cls(sessions, np.concatenate([first.ex_seq, second.ex_seq + len(a)]),
                   np.concatenate([first.ex_len, second.ex_len]))


def split_validation(train: Sessions, fraction: float) -> tuple[Sessions, Sessions]:
    """Hold out the latest `fraction` of training sessions (by end time; by stored order when there are
    no times, since every supported layout stores sessions ordered by time)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(train)
    order = np.arange(n) if train.end_time is None else np.argsort(train.end_time, kind="stable")
    n_valid = int(round(n * fraction))
    return train.subset(np.sort(order[: n - n_valid])), train.subset(np.sort(order[n - n_valid :]))


@dataclass
class SessionDataset:
    """A processed dataset: train/valid/test splits over items 1..n_items, plus how it was made."""

    name: str
    n_items: int
    train: Split
    valid: Split
    test: Split
    meta: dict = field(default_factory=dict)

    SPLITS = ("train", "valid", "test")

    def train_and_valid(self) -> Split:
        """All training data: the train split followed by the (later) validation split. What a model is
        refit on after selection, and what the literature protocol trains on."""
        return Split.concat(self.train, self.valid)

    def stats(self) -> dict:
        """Table 1 statistics. As in the paper, 'sessions' counts prefix examples (train + test; valid is
        carved out of train), clicks count whole-session items and the average length is clicks per
        whole session."""
        splits = [self.train, self.valid, self.test]
        clicks = sum(int(s.sessions.lengths.sum()) for s in splits)
        whole = sum(len(s.sessions) for s in splits)
        items = np.unique(np.concatenate([s.sessions.items for s in splits]))
        return {
            "dataset": self.name,
            "clicks": clicks,
            "sessions": sum(len(s) for s in splits),
            "whole_sessions": whole,
            "items": int(len(items)),
            "n_items": int(self.n_items),
            "avg_length": clicks / max(whole, 1),
            "train_examples": len(self.train),
            "valid_examples": len(self.valid),
            "test_examples": len(self.test),
        }

    def save(self, path) -> None:
        """Write one .npz atomically (arrays + JSON meta)."""
        arrays = {}
        for name in self.SPLITS:
            split = getattr(self, name)
            arrays[f"{name}_items"] = split.sessions.items
            arrays[f"{name}_offsets"] = split.sessions.offsets
            arrays[f"{name}_end_time"] = (
                split.sessions.end_time if split.sessions.end_time is not None else np.zeros(0)
            )
            arrays[f"{name}_ex_seq"] = split.ex_seq
            arrays[f"{name}_ex_len"] = split.ex_len
        header = {"name": self.name, "n_items": int(self.n_items), "meta": self.meta}
        arrays["header"] = np.frombuffer(json.dumps(header, default=str).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "SessionDataset":
        with np.load(Path(path)) as z:
            header = json.loads(bytes(z["header"]).decode())
            splits = {}
            for name in cls.SPLITS:
                times = z[f"{name}_end_time"]
                n = len(z[f"{name}_offsets"]) - 1
                sessions = Sessions(
                    z[f"{name}_items"], z[f"{name}_offsets"], times if len(times) == n and n else None
                )
                splits[name] = Split(sessions, z[f"{name}_ex_seq"], z[f"{name}_ex_len"])
        return cls(header["name"], header["n_items"], meta=header["meta"], **splits)


def make_dataset(name, n_items, train: Sessions, test, valid_fraction=0.1, meta=None) -> SessionDataset:
    """Assemble a dataset from whole training sessions (valid carved off by time) and a test part
    (whole `Sessions`, augmented here, or an explicit `Split` of pairs)."""
    fit, valid = split_validation(train, valid_fraction)
    test_split = test if isinstance(test, Split) else Split.all_prefixes(test)
    meta = dict(meta or {}, valid_fraction=valid_fraction)
    return SessionDataset(
        name, int(n_items), Split.all_prefixes(fit), Split.all_prefixes(valid), test_split, meta
    )
