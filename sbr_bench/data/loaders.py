"""Readers for preprocessed dataset layouts and for a user's own click log.

Layouts (see ../shared/datasets/README.md, "on-disk layouts"):
- ``srgnn``: SR-GNN pickles. ``all_train_seq.txt`` = whole train sessions; ``test.txt`` (and ``train.txt``)
  = ``(prefixes, targets)`` as a tuple or a 2-element list, prefixes longest-first or shortest-first.
  Ids are 1-based; ``n_items`` = the largest id.
- ``lessr``: text, one whole session per line of comma-separated ids (``train.txt``, ``test.txt``, optional
  ``valid.txt``, optional ``num_items.txt``). Id base rule: if any file holds a 0 the ids are 0-based and
  shifted +1 (``n_items`` = ``num_items`` or max id + 1); otherwise they are 1-based (``n_items`` =
  ``num_items - 1`` since such copies count the unused 0, or max id). ``id_base=0|1`` overrides the rule.
- ``sessionrec``: session-rec event TSV (header ``SessionId<TAB>ItemId<TAB>Time``, unix seconds),
  ``*_train_full.txt`` + ``*_test.txt`` (or ``*_train_tr.txt`` + ``*_train_valid.txt`` + ``*_test.txt``).
- ``clicklog``: any CSV/TSV of clicks with named session/item/time columns (``read_click_log``); a
  preprocessing protocol turns it into splits (see ``dataset.py``).

Published test pairs are kept exactly: the pairs are chained back into whole test sessions (consecutive
pairs of one session, either prefix order) and each pair becomes an example (session, prefix length) of
that rebuilt session. So evaluation sees exactly the published pairs (a variant whose shortest prefix has
length 2 has no length-1 examples), while ``SessionDataset.stats()`` counts clicks and average length over
whole sessions, as Table 1 of the paper does (Gowalla: 212,824 test clicks in 57,492 sessions).

Sessions without times are kept in stored order; all these layouts store sessions ordered by time, so the
validation split (the last fraction) is the latest part of train.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataFormatError, UserError
from .readers import regular_file
from .sessions import Sessions, Split

EXPECTED = (
    "SR-GNN pickles (all_train_seq.txt and/or train.txt, plus test.txt), "
    "LESSR text (train.txt, test.txt, optional valid.txt and num_items.txt), "
    "session-rec TSV (*_train_full.txt or *_train_tr.txt, plus *_test.txt, header 'SessionId<TAB>ItemId<TAB>Time'), "
    "or a click-log CSV file"
)
SESSIONREC_HEADER = ("SessionId", "ItemId", "Time")
# Item ids index an embedding table of n_items rows, so one stray huge id (a typo, a hash) would allocate
# gigabytes: the largest id may exceed the number of distinct ids by this factor, or be at most ID_FLOOR.
ID_SLACK, ID_FLOOR = 10, 1_000_000


@dataclass
class LoadedSplits:
    """What a layout reader returns: whole train sessions, the test part, and where they came from."""

    layout: str
    train: Sessions
    test: Split | Sessions  # explicit pairs (Split) or whole sessions to augment
    n_items: int
    files: list[Path]  # every file read, for cache keys
    valid: Sessions | None = None  # an explicit validation split shipped with the data
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Layout detection


def _read_bytes(path: Path, n: int = -1, line: bool = False) -> bytes:
    """The first `n` bytes (or line) of a regular file; any OS error is one DataFormatError."""
    path = regular_file(path)
    try:
        with open(path, "rb") as f:
            return f.readline(n) if line else f.read(n)
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror or e})") from None


def _is_pickle(path: Path) -> bool:
    return _read_bytes(path, 1) == b"\x80"  # pickle protocol >= 2 starts with PROTO


def _first_line(path: Path) -> str:
    # utf-8-sig: a byte-order mark must not hide a header
    return _read_bytes(path, 4096, line=True).decode("utf-8-sig", errors="replace").rstrip("\r\n")


def _text(path: Path, expected: str) -> str:
    try:
        return _read_bytes(path).decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError:
        raise DataFormatError(path, f"not a UTF-8 text file ({expected})") from None


def check_id_bound(path, largest: int, n_distinct: int, what: str = "item id", line=None) -> None:
    """Refuse an id (or item count) far beyond the number of distinct ids (see ID_SLACK)."""
    limit = max(ID_FLOOR, ID_SLACK * n_distinct)
    if largest > limit:
        raise DataFormatError(path, f"{what} {largest} is far beyond the {n_distinct} distinct item ids "
                              f"(at most {limit} accepted, since ids index an embedding table); "
                              "renumber the items 1..N", line)


def _sessionrec_files(folder: Path) -> dict:
    tests = sorted(folder.glob("*_test.txt"))
    full = sorted(folder.glob("*_train_full.txt"))
    tr = sorted(folder.glob("*_train_tr.txt"))
    valid = sorted(folder.glob("*_train_valid.txt"))
    if len(tests) != 1:
        return {}
    if len(full) == 1:
        return {"train": full[0], "test": tests[0]}
    if len(tr) == 1 and len(valid) == 1:
        return {"train": tr[0], "valid": valid[0], "test": tests[0]}
    return {}


def detect_layout(path) -> str:
    """The layout of a folder (or of the folder a file of a preprocessed layout sits in), or 'clicklog'
    for any other delimited file. Raises UserError naming what was expected."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if not path.is_dir():
        path = regular_file(path)  # a FIFO or device is refused before anything opens it
        if path.stat().st_size == 0:
            raise DataFormatError(path, "file is empty")
        if path.name in ("all_train_seq.txt", "train.txt", "test.txt", "valid.txt"):
            return detect_layout(path.parent)
        if _first_line(path).split("\t")[:3] == list(SESSIONREC_HEADER) and _sessionrec_files(path.parent):
            return "sessionrec"
        if _is_pickle(path):
            raise UserError(f"{path} is a pickle but not one of all_train_seq.txt/train.txt/test.txt; "
                            "point at the folder of an SR-GNN layout instead")
        return "clicklog"
    names = {p.name for p in path.iterdir()}
    if "test.txt" in names and ("all_train_seq.txt" in names or "train.txt" in names):
        first = path / ("all_train_seq.txt" if "all_train_seq.txt" in names else "train.txt")
        if _is_pickle(first) or first.name == "all_train_seq.txt":
            return "srgnn"
        return "lessr"
    if _sessionrec_files(path):
        return "sessionrec"
    found = ", ".join(sorted(names)[:12]) or "nothing"
    raise UserError(f"{path}: no known dataset layout (found: {found}); expected {EXPECTED}")


def input_files(path) -> tuple[str, list[Path]]:
    """(layout, the files its reader will read): what a cache key must hash, known before loading."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "clicklog":
        return layout, [path]
    folder = path if path.is_dir() else path.parent
    if layout == "srgnn":
        train = folder / "all_train_seq.txt"
        return layout, [train if train.exists() else folder / "train.txt", folder / "test.txt"]
    if layout == "lessr":
        names = ("train.txt", "test.txt", "valid.txt", "num_items.txt")
        return layout, [folder / n for n in names if (folder / n).exists()]
    return layout, list(_sessionrec_files(folder).values())


def load_preprocessed(path, id_base=None) -> LoadedSplits:
    """Read a preprocessed folder (or a file inside one) of any supported layout."""
    path = Path(path)
    layout = detect_layout(path)
    folder = path if path.is_dir() else path.parent
    if layout == "srgnn":
        return load_srgnn(folder)
    if layout == "lessr":
        return load_lessr(folder, id_base=id_base)
    if layout == "sessionrec":
        return load_sessionrec(folder)
    raise ConfigError("session_col", f"{path} looks like a click log, not a preprocessed layout; give its "
                      "session, item and time column names so a protocol can preprocess it")


# ----------------------------------------------------------------------------------------------------
# SR-GNN pickles


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global, so only plain containers and numbers load: a crafted pickle cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only plain lists/tuples of ints are accepted")


# A pickle can reference one list many times, so a few KB can stand for millions of ids (743 MB once
# the sessions are built). SR-GNN's own pickles hold about 0.25 ids per byte (4 bytes an id).
MAX_IDS_PER_BYTE = 1.0
MAX_IDS_ENV = "SBR_BENCH_MAX_IDS_PER_BYTE"  # raises the cap for a file that really is that dense


def read_pickle(path: Path):
    data = _read_bytes(path)
    if not data:
        raise DataFormatError(path, "file is empty")
    try:
        loaded = _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # any unpickling failure: truncated, not a pickle, foreign objects
        raise DataFormatError(path, f"not a readable SR-GNN pickle ({type(e).__name__}: {e})") from None
    ids = _count_ids(path, loaded, {})
    try:
        cap = float(os.environ.get(MAX_IDS_ENV, MAX_IDS_PER_BYTE))
    except ValueError:
        raise UserError(f"{MAX_IDS_ENV}={os.environ[MAX_IDS_ENV]!r}: expected a number of ids per byte") from None
    if ids > cap * len(data):
        raise DataFormatError(path, f"its {len(data):,} bytes stand for {ids:,} ids ({ids / len(data):,.0f} per "
                              f"byte; SR-GNN pickles hold about 0.25): refused, as a file that expands this much "
                              f"is not a plain split; set {MAX_IDS_ENV}={math.ceil(ids / len(data))} to load it")
    return loaded


def _count_ids(path, obj, memo, depth=0) -> int:
    """Ids in nested lists/tuples, every reference counted (a list referenced twice counts twice), each
    distinct list visited once, so the count costs nothing like the expansion it measures."""
    if not isinstance(obj, (list, tuple)):
        return 1
    if depth > 3:  # SR-GNN data is (prefixes, targets) of lists of ids: three levels
        raise DataFormatError(path, "nested deeper than an SR-GNN pickle (lists of lists of item ids)")
    key = id(obj)
    if key not in memo:
        memo[key] = sum(_count_ids(path, x, memo, depth + 1) for x in obj)
    return memo[key]


def _check_seqs(path: Path, seqs, what: str, min_len: int = 1) -> None:
    if not isinstance(seqs, list):
        raise DataFormatError(path, f"{what} must be a list of sessions, got {type(seqs).__name__}")
    for k, s in enumerate(seqs):
        if not isinstance(s, (list, tuple)) or len(s) < min_len:
            raise DataFormatError(path, f"{what} entry {k} is not a list of at least {min_len} item ids: {s!r:.80}")
        for i in s:
            if type(i) is not int or i < 1:
                raise DataFormatError(path, f"{what} entry {k} holds {i!r:.40}; "
                                      "ids must be integers >= 1 (0 is padding)")


def read_srgnn_pairs(path: Path):
    """(prefixes, targets) from a pickled pair file; tuple or 2-element list containers."""
    data = read_pickle(path)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataFormatError(path, "expected (prefixes, targets) as a tuple or 2-element list, got "
                              f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}")
    prefixes, targets = data
    prefixes = list(prefixes) if isinstance(prefixes, tuple) else prefixes
    targets = list(targets) if isinstance(targets, tuple) else targets
    _check_seqs(path, prefixes, "prefix")
    if not isinstance(targets, list) or len(targets) != len(prefixes):
        raise DataFormatError(path, f"{len(prefixes)} prefixes but targets is not a list of the same length")
    _check_seqs(path, [[t] for t in targets], "target")
    if not prefixes:
        raise DataFormatError(path, "holds no pairs")
    return prefixes, targets


def pairs_to_sessions(prefixes, targets):
    """Chain consecutive pairs of one session back into that whole session.

    Two orders occur: longest-first (SR-GNN: s[:-1]->s[-1], s[:-2]->s[-2], ...) and shortest-first
    (LESSR converters: s[:1]->s[1], s[:2]->s[2], ...). The order is the one most consecutive pairs follow.
    A pair that does not continue the previous one starts a new session, so every pair is always exactly
    a prefix of its rebuilt session. Returns (Sessions, ex_seq, ex_len, order).
    """
    n = len(prefixes)
    longest = shortest = 0
    for j in range(1, n):
        p, t, q = prefixes[j - 1], targets[j - 1], prefixes[j]
        if len(q) == len(p) - 1 and targets[j] == p[-1] and q == p[:-1]:
            longest += 1
        elif len(q) == len(p) + 1 and q[-1] == t and q[:-1] == p:
            shortest += 1
    order = "longest-first" if longest > shortest else "shortest-first" if shortest else "one pair per session"
    seqs, ex_seq, ex_len = [], np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for j in range(n):
        p, t = prefixes[j], targets[j]
        if j and order == "longest-first":
            cur = seqs[-1]
            cont = len(p) == ex_len[j - 1] - 1 and t == cur[len(p)] and cur[: len(p)] == list(p)
        elif j and order == "shortest-first":
            cur = seqs[-1]
            cont = len(p) == len(cur) and cur == list(p)
            if cont:
                cur.append(t)
        else:
            cont = False
        if not cont:
            seqs.append(list(p) + [t])
        ex_seq[j], ex_len[j] = len(seqs) - 1, len(p)
    return Sessions.from_lists(seqs), ex_seq, ex_len, order


def load_srgnn(folder) -> LoadedSplits:
    folder = Path(folder)
    test_path, all_train = folder / "test.txt", folder / "all_train_seq.txt"
    if not test_path.exists():
        raise UserError(f"{folder}: SR-GNN layout needs test.txt")
    info = {}
    if all_train.exists():
        seqs = read_pickle(all_train)
        _check_seqs(all_train, seqs, "session")
        files = [all_train, test_path]
        info["train_from"] = "all_train_seq.txt"
    elif (folder / "train.txt").exists():
        pairs = read_srgnn_pairs(folder / "train.txt")
        files = [folder / "train.txt", test_path]
        info["train_from"] = "train.txt (sessions rebuilt from pairs)"
    else:
        raise UserError(f"{folder}: SR-GNN layout needs all_train_seq.txt or train.txt next to test.txt")
    prefixes, targets = read_srgnn_pairs(test_path)
    # n_items is the largest id: check it before any array is built from the ids (counting the distinct
    # ids only when the largest is big, which real splits never are)
    train_seqs = seqs if all_train.exists() else pairs[0] + [[t] for t in pairs[1]]
    test_seqs = prefixes + [[t] for t in targets]
    his = [(p, max(max(s) for s in part)) for p, part in zip(files, (train_seqs, test_seqs))]
    if max(hi for _, hi in his) > ID_FLOOR:
        ids = {i for part in (train_seqs, test_seqs) for s in part for i in s}
        for p, hi in his:
            check_id_bound(p, hi, len(ids))
    if all_train.exists():
        train = Sessions.from_lists(seqs)
    else:
        train, _, _, order = pairs_to_sessions(*pairs)
        info["train_pair_order"] = order
    test_sessions, ex_seq, ex_len, order = pairs_to_sessions(prefixes, targets)
    test = Split(test_sessions, ex_seq, ex_len)
    n_items = int(max(train.items.max(initial=0), test_sessions.items.max(initial=0)))
    info.update(test_pairs=len(test), test_sessions_rebuilt=len(test_sessions), test_pair_order=order,
                min_test_prefix=int(ex_len.min()))
    return LoadedSplits("srgnn", train, test, n_items, files, info=info)


# ----------------------------------------------------------------------------------------------------
# LESSR text


def read_lessr_sessions(path: Path) -> list[list[int]]:
    """One session per line, comma-separated integer ids; names file and line on any bad line."""
    text = _text(path, "LESSR layout expects comma-separated ids")
    lines = text.rstrip("\r\n").split("\n") if text.strip() else []
    if not lines:
        raise DataFormatError(path, "file is empty")
    seqs = []
    for no, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            raise DataFormatError(path, "empty line (expected comma-separated item ids)", no)
        try:
            seq = [int(x) for x in line.split(",") if x.isascii()]  # int() would also take '١٢'
            if len(seq) != line.count(",") + 1:
                raise ValueError
        except ValueError:
            raise DataFormatError(path, f"not a comma-separated list of integers: {line!r:.80}", no) from None
        if min(seq) < 0:
            raise DataFormatError(path, f"negative item id in {line!r:.80}", no)
        seqs.append(seq)
    return seqs


def read_num_items(path: Path) -> int:
    text = _text(path, "num_items.txt holds one integer").strip()
    try:
        value = int(text)
    except ValueError:
        raise DataFormatError(path, f"expected one integer, got {text!r:.40}", 1) from None
    if value < 1:
        raise DataFormatError(path, f"expected a positive item count, got {value}", 1)
    return value


def load_lessr(folder, id_base=None) -> LoadedSplits:
    folder = Path(folder)
    parts = {}
    for name in ("train", "test", "valid"):
        p = folder / f"{name}.txt"
        if p.exists():
            parts[name] = (p, read_lessr_sessions(p))
        elif name != "valid":
            raise UserError(f"{folder}: LESSR layout needs {name}.txt (found: "
                            f"{', '.join(sorted(q.name for q in folder.iterdir()))})")
    num_items_path = folder / "num_items.txt"
    num_items = read_num_items(num_items_path) if num_items_path.exists() else None
    lo = min(min(min(s) for s in seqs) for _, seqs in parts.values())
    hi = max(max(max(s) for s in seqs) for _, seqs in parts.values())
    # A huge id or count would allocate an embedding table of that many rows: refuse it, naming where.
    ids = set()
    for _, seqs in parts.values():
        for seq in seqs:
            ids.update(seq)
    if hi > max(ID_FLOOR, ID_SLACK * len(ids)):
        p, line = next((p, no) for p, seqs in parts.values() for no, seq in enumerate(seqs, 1) if max(seq) == hi)
        check_id_bound(p, hi, len(ids), line=line)
    if num_items is not None:
        check_id_bound(num_items_path, num_items, len(ids), "num_items", line=1)
    if id_base is None:
        id_base = 0 if lo == 0 else 1
    if id_base not in (0, 1):
        raise UserError(f"id_base must be 0 or 1, got {id_base!r}")
    if id_base == 1 and lo == 0:
        raise UserError(f"{folder}: id_base=1 but the files hold item id 0")
    if id_base == 0:
        n_items = num_items if num_items is not None else hi + 1
    else:
        n_items = num_items - 1 if num_items is not None else hi
    if hi + (1 - id_base) > n_items:
        raise DataFormatError(num_items_path, f"num_items {num_items} is too small for the largest id {hi} "
                              f"({id_base}-based ids)")
    shift = 1 - id_base
    splits = {name: Sessions.from_lists([[i + shift for i in s] for s in seqs]) for name, (_, seqs) in parts.items()}
    files = [p for p, _ in parts.values()] + ([num_items_path] if num_items is not None else [])
    info = {"id_base": id_base, "num_items_file": num_items}
    return LoadedSplits("lessr", splits["train"], splits["test"], int(n_items), files,
                        valid=splits.get("valid"), info=info)


# ----------------------------------------------------------------------------------------------------
# session-rec event TSV


def _read_sessionrec_events(path: Path):
    import pandas as pd

    if _first_line(path).split("\t")[:3] != list(SESSIONREC_HEADER):
        raise DataFormatError(path, "expected the header 'SessionId<TAB>ItemId<TAB>Time'", 1)
    try:
        df = pd.read_csv(path, sep="\t", usecols=list(SESSIONREC_HEADER), encoding="utf-8",
                         encoding_errors="replace",
                         dtype={"SessionId": "int64", "ItemId": "int64", "Time": "float64"})
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror or e})") from None
    except (ValueError, OverflowError, pd.errors.ParserError) as e:  # OverflowError: an id beyond int64
        raise DataFormatError(path, f"not a session-rec event file ({' '.join(str(e).split())[:200]})") from None
    if df.empty:
        raise DataFormatError(path, "holds no events")
    return df


def events_to_sessions(session, item, time):
    """Group events into sessions (clicks by time within a session, sessions by end time).
    Returns (session item arrays concatenated, offsets, end times) with the raw item ids."""
    import pandas as pd

    session, item, time = np.asarray(session), np.asarray(item), np.asarray(time, dtype=np.float64)
    codes, _ = pd.factorize(session)
    end = pd.Series(time).groupby(codes).max().to_numpy()
    order = np.lexsort((time, codes, end[codes]))
    codes_sorted = codes[order]
    starts = np.flatnonzero(np.r_[True, codes_sorted[1:] != codes_sorted[:-1]])
    offsets = np.r_[starts, len(order)].astype(np.int64)
    return item[order], offsets, end[codes_sorted[starts]]


def renumber_by_train(train_items, train_offsets, train_end, others):
    """Item ids 1..N by first appearance in train; other parts lose unknown items, then sessions < 2.
    `others`: list of (items, offsets, end). Returns (n_items, train Sessions, [other Sessions])."""
    import pandas as pd

    codes, uniques = pd.factorize(train_items)
    train = Sessions(codes.astype(np.int64) + 1, train_offsets, train_end)
    index = pd.Index(uniques)
    out = []
    for items, offsets, end in others:
        mapped = index.get_indexer(items).astype(np.int64) + 1  # 0 = unknown
        seq_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        keep = mapped > 0
        lengths = np.bincount(seq_of[keep], minlength=len(offsets) - 1)
        long_enough = lengths >= 2
        keep &= long_enough[seq_of]
        new_offsets = np.r_[0, np.cumsum(lengths[long_enough])].astype(np.int64)
        out.append(Sessions(mapped[keep], new_offsets, end[long_enough]))
    return len(uniques), train, out


def load_sessionrec(folder) -> LoadedSplits:
    folder = Path(folder)
    found = _sessionrec_files(folder)
    if not found:
        raise UserError(f"{folder}: session-rec layout needs *_train_full.txt (or *_train_tr.txt and "
                        "*_train_valid.txt) and *_test.txt")
    parts = {}
    for name, p in found.items():
        df = _read_sessionrec_events(p)
        parts[name] = events_to_sessions(df["SessionId"].to_numpy(), df["ItemId"].to_numpy(), df["Time"].to_numpy())
    others = ["test"] + (["valid"] if "valid" in parts else [])
    n_items, train, rest = renumber_by_train(*parts["train"], [parts[n] for n in others])
    rest = dict(zip(others, rest))
    info = {"train_file": found["train"].name, "test_file": found["test"].name}
    return LoadedSplits("sessionrec", train, rest["test"], n_items, list(found.values()),
                        valid=rest.get("valid"), info=info)


# ----------------------------------------------------------------------------------------------------
# A user's click log


def read_click_log(path, session_col, item_col, time_col, delimiter=","):
    """A click log as a DataFrame with columns ``session``, ``time`` (UTC datetime, like the raw readers
    in ``readers.py``) and ``item``, in file order. Times may be numeric unix seconds or ISO-8601.
    Every line must have as many fields as the header; a line with an empty session, item or time (or
    a blank line) is skipped."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UserError(f"click log {path} does not exist")
    path = regular_file(path)
    flags = (("session_col", session_col), ("item_col", item_col), ("time_col", time_col))
    missing = [flag for flag, col in flags if not col]
    if missing:
        raise ConfigError(missing[0], f"{path}: a click log needs the names of its "
                          f"{', '.join(m[:-4] for m in missing)} column(s)")
    for k, (flag, col) in enumerate(flags):
        for other, col2 in flags[k + 1:]:
            if col == col2:  # one column cannot be two roles (pandas would fail with a KeyError)
                raise UserError(f"{path}: {flag} and {other} both name the column {col!r}; "
                                "give three different columns")
    try:
        # All fields as text, header row included (row 0), so that every line's width is checked: with
        # usecols pandas would silently drop an extra field, or shift all columns if every row had one.
        raw = pd.read_csv(path, sep=delimiter, header=None, dtype=str, skip_blank_lines=False,
                          encoding="utf-8", encoding_errors="replace")
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror or e})") from None
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, "file is empty") from None
    except (ValueError, OverflowError, pd.errors.ParserError) as e:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if found:
            n, line, saw = map(int, found.groups())
            raise DataFormatError(path, f"expected {n} {delimiter!r}-separated fields like the header, "
                                  f"found {saw}", line) from None
        raise DataFormatError(path, f"cannot parse with delimiter {delimiter!r} "
                              f"({' '.join(str(e).split())[:200]})") from None
    header = ["" if pd.isna(h) else str(h) for h in raw.iloc[0]]
    absent = [c for c in (session_col, item_col, time_col) if c not in header]
    if absent:
        raise UserError(f"{path}: column(s) {', '.join(map(repr, absent))} not in the header "
                        f"{[h[:40] for h in header[:12]]} (delimiter {delimiter!r})")
    twice = [c for c in (session_col, item_col, time_col) if header.count(c) > 1]
    if twice:
        raise DataFormatError(path, f"the header names column {twice[0]!r} more than once", 1)
    _check_short_lines(path, raw, delimiter, len(header))
    df = raw.iloc[1:, [header.index(c) for c in (session_col, item_col, time_col)]]
    df.columns = ["session", "item", "time"]
    df = df.dropna()  # index = file line - 1 (blank lines are kept as empty rows, so numbers hold)
    if df.empty:
        raise DataFormatError(path, "holds no complete clicks (session, item and time all present)")
    df["time"] = _to_utc(path, time_col, df["time"])
    return df[["session", "time", "item"]].reset_index(drop=True)


def _check_short_lines(path, raw, delimiter: str, width: int) -> None:
    """pandas pads a line with fewer fields than the header with empty ones; an empty field is a skipped
    click, but a missing one means the line is malformed: find such lines (only among the rows pandas
    padded, so a clean file is not read twice) and name the first."""
    padded = raw.index[raw.iloc[:, -1].isna() & raw.notna().any(axis=1)]
    if len(padded) == 0:
        return
    wanted = set(int(i) for i in padded)
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for number, line in enumerate(f):
            if number in wanted and line.strip() and line.rstrip("\r\n").count(delimiter) + 1 < width:
                raise DataFormatError(path, f"expected {width} {delimiter!r}-separated fields like the header, "
                                      f"found {line.rstrip(chr(13) + chr(10)).count(delimiter) + 1}", number + 1)
            if number > max(wanted):
                return


# Unix seconds that fit a pandas timestamp (years 1677..2262); beyond, pandas raises or wraps around.
_MIN_SECONDS, _MAX_SECONDS = -9_223_372_036, 9_223_372_036


def _to_utc(path, col, values):
    """Unix seconds (all numeric) or ISO-8601 text to UTC timestamps; names the first bad value and line
    (the index of `values` is the file line - 1)."""
    import pandas as pd

    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        seconds = numeric.astype("float64").to_numpy()
        bad = ~((seconds >= _MIN_SECONDS) & (seconds <= _MAX_SECONDS))  # also catches inf and nan
        if bad.any():
            k = int(np.argmax(bad))
            raise DataFormatError(path, f"column {col!r}: {values.iloc[k]!r:.40} is out of the range of "
                                  "unix seconds a timestamp can hold (years 1677-2262)", int(values.index[k]) + 1)
        return pd.to_datetime(seconds, unit="s", utc=True).to_series(index=values.index)
    times = pd.to_datetime(values.astype(str), utc=True, format="ISO8601", errors="coerce")
    bad = times.isna().to_numpy()
    if bad.any():
        k = int(np.argmax(bad))
        raise DataFormatError(path, f"column {col!r}: {values.iloc[k]!r:.40} is neither unix seconds nor an "
                              "ISO-8601 time (within years 1677-2262)", int(values.index[k]) + 1)
    return times
