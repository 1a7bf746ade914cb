"""The two published preprocessing protocols, vectorised: raw clicks -> train/test whole sessions.

- `srgnn_protocol`: CRIPAC-DIG/SR-GNN `datasets/preprocess.py` (Diginetica, YOOCHOOSE), plus an opt-in
  `strict` variant without the test-period leaks (evaluation-pitfalls item 5).
- `lessr_protocol`: twchen/lessr `utils/data/preprocess.py` (Diginetica, Gowalla, Last.fm).

Both take the DataFrame of a reader in `sbr_bench.data.readers` and return a `ProtocolResult` whose
sessions use item ids 1..n_items (0 is padding), numbered in order of first appearance in the training
data as the original scripts number them, ordered by time as the original scripts write them, with
`end_time` in seconds. Every parameter is explicit and copied into `info` with the counts of each step.

Known, documented deviations from the originals (all concern ties or time zones, see the functions):
- SR-GNN converts dates with `time.mktime` (local time); we use UTC. The split is `max - 7 * 86400 s` in
  both cases; they differ only if a daylight-saving change falls inside the last 7 days in local time.
- LESSR orders sessions by end time with pandas' default (unstable) quicksort; we break end-time ties by
  session id (stable), so tied sessions may come out in another order, and the 80/20 cut may pick another
  member of a tie at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import UserError
from .sessions import Sessions

DAY_S = 86400
NS = 1_000_000_000


@dataclass
class ProtocolResult:
    train: Sessions
    test: Sessions
    n_items: int
    info: dict = field(default_factory=dict)


_SRGNN_DEFAULTS = {
    "min_session_length": 2,
    "min_item_support": 5,
    "test_days": 7,
    "split_day": "drop",  # sessions dated exactly max_date - test_days: "drop" (original), "train", "test"
    "strict": False,
    "unseen_test_items": "delete",  # "delete" (original), "truncate", "drop_session"
    "train_fraction": None,  # YOOCHOOSE 1/4, 1/64: keep the most recent fraction of augmented train pairs
}
_LESSR_DEFAULTS = {
    "min_session_length": 2,
    "min_item_support": 5,
    "max_length": 20,
}
_DEFAULTS = {
    ("srgnn", "diginetica"): dict(_SRGNN_DEFAULTS),
    ("srgnn", "yoochoose"): dict(_SRGNN_DEFAULTS, test_days=1),
    ("lessr", "diginetica"): dict(_LESSR_DEFAULTS, test_days=7),
    ("lessr", "gowalla"): dict(_LESSR_DEFAULTS, session_gap_s=DAY_S, top_n_items=30000, test_fraction=0.2),
    ("lessr", "lastfm"): dict(_LESSR_DEFAULTS, session_gap_s=8 * 3600, top_n_items=40000, test_fraction=0.2),
}
_ALIASES = {"sample": "diginetica"}  # SR-GNN's `--dataset sample` runs the Diginetica branch


def default_params(protocol: str, dataset: str) -> dict:
    """The published settings of `protocol` for `dataset` (a fresh dict)."""
    key = (protocol, _ALIASES.get(dataset, dataset))
    if key not in _DEFAULTS:
        known = ", ".join(f"{p}/{d}" for p, d in _DEFAULTS)
        raise UserError(f"no {protocol!r} protocol for dataset {dataset!r} (known: {known})")
    return dict(_DEFAULTS[key])


def _resolve(protocol, dataset, params, clicks, columns) -> tuple[str, dict]:
    dataset = _ALIASES.get(dataset, dataset)
    p = default_params(protocol, dataset)
    unknown = sorted(set(params) - set(p))
    if unknown:
        raise UserError(f"unknown {protocol} protocol parameter(s) {unknown}; known: {sorted(p)}")
    p.update(params)
    missing = [c for c in columns if c not in clicks.columns]
    if missing:
        raise UserError(f"{protocol} protocol on {dataset} needs columns {columns}; missing {missing}")
    return dataset, p


# ---------------------------------------------------------------- small vectorised building blocks


def _ns(times: pd.Series) -> np.ndarray:
    """Datetimes (naive = UTC, or tz-aware) as int64 nanoseconds since the epoch."""
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times.astype("datetime64[ns]").to_numpy().view(np.int64)


def _stable_order(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Indices ordering by (primary, secondary), ties in input order (= `np.lexsort((secondary,
    primary))`). One stable argsort of a combined int64 key: numpy's lexsort and stable argsorts of
    random int64 columns are ~10x slower on 1M rows. Keys too wide to combine are replaced by dense ranks."""
    if len(primary) == 0:
        return np.zeros(0, dtype=np.int64)
    p = primary.astype(np.int64) - primary.min()
    s = secondary.astype(np.int64) - secondary.min()
    limit = np.iinfo(np.int64).max // 2
    if int(p.max()) >= limit // (int(s.max()) + 1):
        s = np.unique(s, return_inverse=True)[1].reshape(-1)
    if int(p.max()) >= limit // (int(s.max()) + 1):
        p = np.unique(p, return_inverse=True)[1].reshape(-1)
    return np.argsort(p * (int(s.max()) + 1) + s, kind="stable")


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal keys (keys grouped contiguously)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _group_size(keys: np.ndarray) -> np.ndarray:
    """Per element: the size of its run of equal keys."""
    starts = _group_starts(keys)
    sizes = np.diff(np.r_[starts, len(keys)])
    return np.repeat(sizes, sizes)


def _position_in_group(keys: np.ndarray) -> np.ndarray:
    """Per element: its 0-based position within its run (pandas groupby.cumcount on sorted keys)."""
    starts = _group_starts(keys)
    sizes = np.diff(np.r_[starts, len(keys)])
    return np.arange(len(keys)) - np.repeat(starts, sizes)


def _support(items: np.ndarray, n_codes: int) -> np.ndarray:
    """Per element: how often its item occurs among `items` (codes 0..n_codes-1)."""
    return np.bincount(items, minlength=n_codes)[items]


def _sessions_from_sorted(keys, items, times=None) -> tuple[Sessions, np.ndarray]:
    """Sessions (one per run of `keys`, in run order) and the key of each; end_time = max time (s)."""
    starts = _group_starts(keys)
    offsets = np.r_[starts, len(keys)].astype(np.int64)
    end = None if times is None else np.maximum.reduceat(times, starts) / NS if len(starts) else np.zeros(0)
    return Sessions(np.asarray(items, dtype=np.int64), offsets, end), keys[starts]


def _renumber(train_items: np.ndarray, n_codes: int) -> tuple[np.ndarray, int]:
    """Map item code -> 1..n in order of first appearance in `train_items`; 0 = not in train."""
    first = pd.unique(train_items)
    mapping = np.zeros(n_codes, dtype=np.int64)
    mapping[first] = np.arange(1, len(first) + 1)
    return mapping, len(first)


def _drop_short(sessions: Sessions, min_length: int) -> Sessions:
    return sessions.subset(np.flatnonzero(sessions.lengths >= min_length))


def _mask_sessions(sessions: Sessions, keep: np.ndarray) -> Sessions:
    """Remove the clicks where `keep` is False (sessions stay, possibly shorter or empty)."""
    session_of = np.repeat(np.arange(len(sessions)), sessions.lengths)
    lengths = np.bincount(session_of[keep], minlength=len(sessions))
    offsets = np.zeros(len(sessions) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sessions(sessions.items[keep], offsets, sessions.end_time)


# ---------------------------------------------------------------- SR-GNN


def srgnn_protocol(clicks: pd.DataFrame, dataset: str, **params) -> ProtocolResult:
    """SR-GNN `datasets/preprocess.py`, step by step (vectorised):

    1. Group clicks by session (first appearance order). Diginetica: order each session's clicks by
       `timeframe` with a stable sort; YOOCHOOSE: keep file order. The session date is the `eventdate`
       (Diginetica) or the timestamp truncated to seconds (YOOCHOOSE) of the session's LAST ROW in file
       order, taken before any filtering.
    2. Drop sessions of length 1; count item support once over all remaining sessions (train AND test
       period), delete items with support < 5 from sessions, drop sessions shorter than 2.
    3. split = max date (over the remaining sessions) - test_days; train = date < split, test = date >
       split; sessions dated exactly `split` are dropped by the original (`split_day="drop"`).
    4. Train and test are each ordered by date with a stable sort (ties: first appearance in the file).
    5. Items renumbered 1.. in order of first appearance in the ordered train sessions; unseen items are
       deleted from test sessions, then test sessions shorter than 2 are dropped.

    `strict=True` (default off, evaluation-pitfalls item 5) changes two things: item support is counted
    on the training-period sessions only (the split date is taken over the sessions that survive step 2's
    length-1 filter, before item filtering, because item filtering now depends on the split), and
    `unseen_test_items` defaults to "truncate": a test session is cut just before its first item that is
    not in the training vocabulary (so no transition that never happened is made up); "drop_session"
    drops such sessions instead. Training sessions still have their rare items deleted, as in both
    published protocols.

    `train_fraction` (YOOCHOOSE 1/4 or 1/64) keeps the sessions of the most recent `fraction` of the
    augmented training pairs, as SR-GNN's `all_train_seq.txt` does (from the session holding the first
    kept pair on; `info["train_fraction_cut_prefixes"]` says how many of its longest prefixes SR-GNN's
    `train.txt` leaves out). Item ids and n_items stay those of the whole training period, as SR-GNN's.
    """
    is_yoochoose = _ALIASES.get(dataset, dataset) == "yoochoose"
    columns = ["session", "item", "time"] if is_yoochoose else ["session", "item", "timeframe", "eventdate"]
    dataset, p = _resolve("srgnn", dataset, params, clicks, columns)
    strict = bool(p["strict"])
    if p["split_day"] not in ("drop", "train", "test"):
        raise UserError(f"split_day must be 'drop', 'train' or 'test', got {p['split_day']!r}")
    unseen = p["unseen_test_items"]
    if strict and "unseen_test_items" not in params:
        unseen = p["unseen_test_items"] = "truncate"
    if unseen not in ("delete", "truncate", "drop_session"):
        raise UserError(f"unseen_test_items must be 'delete', 'truncate' or 'drop_session', got {unseen!r}")
    info = {"protocol": "srgnn", "dataset": dataset, "params": dict(p), "raw_clicks": len(clicks)}

    session_code, _ = pd.factorize(clicks["session"], sort=False)
    item_code, item_uniques = pd.factorize(clicks["item"], sort=False)
    n_sessions, n_codes = int(session_code.max(initial=-1)) + 1, len(item_uniques)
    info["raw_sessions"], info["raw_items"] = n_sessions, n_codes
    if is_yoochoose:
        row_date = _ns(clicks["time"]) // NS  # SR-GNN parses curdate[:19]: whole seconds
        order = np.argsort(session_code, kind="stable")
    else:
        row_date = _ns(clicks["eventdate"]) // NS
        order = _stable_order(session_code, clicks["timeframe"].to_numpy())
    last_row = np.zeros(n_sessions, dtype=np.int64)
    np.maximum.at(last_row, session_code, np.arange(len(clicks)))
    date = row_date[last_row].astype(np.int64)  # per session code

    # All sessions in first-appearance order, clicks in protocol order.
    everything = Sessions(
        item_code[order].astype(np.int64),
        np.r_[0, np.cumsum(np.bincount(session_code, minlength=n_sessions))].astype(np.int64),
        date.astype(np.float64),
    )
    long_enough = everything.lengths >= p["min_session_length"]
    info["sessions_after_length1_filter"] = int(long_enough.sum())

    def split_by_date(kept: np.ndarray):
        max_date = int(date[kept].max()) if kept.any() else 0
        split = max_date - p["test_days"] * DAY_S
        train = kept & ((date < split) | ((date == split) & (p["split_day"] == "train")))
        test = kept & ((date > split) | ((date == split) & (p["split_day"] == "test")))
        on_split_day = int((kept & (date == split)).sum())
        info.update(max_date=max_date, split_date=split, sessions_on_split_date=on_split_day)
        return train, test

    session_of_click = np.repeat(np.arange(n_sessions), everything.lengths)
    if not strict:
        counted = long_enough[session_of_click]
        support = np.bincount(everything.items[counted], minlength=n_codes)
        filtered = _mask_sessions(everything, support[everything.items] >= p["min_item_support"])
        kept = long_enough & (filtered.lengths >= p["min_session_length"])
        is_train, is_test = split_by_date(kept)
        train_source, test_source = filtered, filtered
    else:
        is_train, is_test = split_by_date(long_enough)
        counted = is_train[session_of_click]
        support = np.bincount(everything.items[counted], minlength=n_codes)
        filtered = _mask_sessions(everything, support[everything.items] >= p["min_item_support"])
        is_train &= filtered.lengths >= p["min_session_length"]
        train_source, test_source = filtered, everything
    info["item_support_counted_on"] = "train period" if strict else "all sessions (train and test period)"

    def by_date(mask):
        idx = np.flatnonzero(mask)
        return idx[np.argsort(date[idx], kind="stable")]

    train = train_source.subset(by_date(is_train))
    mapping, n_items = _renumber(train.items, n_codes)
    train = Sessions(mapping[train.items], train.offsets, train.end_time)
    test = test_source.subset(by_date(is_test))
    test = Sessions(mapping[test.items], test.offsets, test.end_time)
    test = _drop_short(_apply_vocabulary(test, unseen), p["min_session_length"])
    if p["train_fraction"] is not None:
        train = _recent_pairs(train, float(p["train_fraction"]), info)
    info.update(_counts(train, test, n_items))
    return ProtocolResult(train, test, n_items, info)


def _apply_vocabulary(test: Sessions, policy: str) -> Sessions:
    """Handle items that are 0 (not in the training vocabulary) inside test sessions."""
    unseen = test.items == 0
    if policy == "delete":
        return _mask_sessions(test, ~unseen)
    seen_before = np.cumsum(unseen) - np.repeat(np.r_[0, np.cumsum(unseen)][test.offsets[:-1]], test.lengths)
    if policy == "truncate":  # keep the clicks before the first unseen one
        return _mask_sessions(test, seen_before == 0)
    clean = np.flatnonzero(np.add.reduceat(unseen, test.offsets[:-1]) == 0) if len(test) else np.zeros(0, int)
    return test.subset(clean)  # "drop_session"


def _recent_pairs(train: Sessions, fraction: float, info: dict) -> Sessions:
    pairs = np.maximum(train.lengths - 1, 0)
    n_keep = int(pairs.sum() * fraction)
    if n_keep <= 0:
        raise UserError(f"train_fraction={fraction} keeps no training pair")
    first_pair = np.r_[0, np.cumsum(pairs)]  # SR-GNN's tr_ids[-n_keep] is the session of pair P - n_keep
    s0 = int(np.searchsorted(first_pair, first_pair[-1] - n_keep, side="right") - 1)
    info["train_fraction_pairs"] = n_keep
    info["train_fraction_cut_prefixes"] = int(first_pair[-1] - n_keep - first_pair[s0])
    return train.subset(np.arange(s0, len(train)))


def _counts(train: Sessions, test: Sessions, n_items: int) -> dict:
    return {
        "n_items": int(n_items),
        "train_sessions": len(train),
        "test_sessions": len(test),
        "train_clicks": int(train.lengths.sum()),
        "test_clicks": int(test.lengths.sum()),
        "clicks": int(train.lengths.sum() + test.lengths.sum()),
        "train_pairs": int(np.maximum(train.lengths - 1, 0).sum()),
        "test_pairs": int(np.maximum(test.lengths - 1, 0).sum()),
    }


# ---------------------------------------------------------------- LESSR


def lessr_protocol(clicks: pd.DataFrame, dataset: str, **params) -> ProtocolResult:
    """LESSR `utils/data/preprocess.py` (vectorised; pandas' sorts there are stable multi-key sorts).

    Diginetica: timestamp = eventdate + timeframe ms; order by (session id, timestamp); drop sessions < 2;
    keep each session's first 20 clicks; drop items with support < 5 (one pass); drop sessions < 2;
    test = sessions whose end time >= max timestamp - 7 days.
    Gowalla / Last.fm: drop rows with a missing user, time or item; order by (user in first-appearance
    order, time); a new session starts when the user changes or the gap to the previous click is more than
    `session_gap_s`; remove immediate repeats; keep each session's first 20 clicks; keep the `top_n_items`
    most frequent items (ties at the cut: first appearance in that order, as `Series.nlargest`); repeat
    {drop sessions < 2, drop items with support < 5} until nothing changes; test = the `test_fraction` of
    sessions with the latest end time (int(n * fraction) sessions; the original would take ALL sessions
    when that is 0, we take none).
    Saving: delete test items absent from train, drop test sessions < 2, number items by first appearance
    in the train clicks in (session id, time) order -- NOT end-time order -- and order the sessions of
    each part by end time (ties by session id; the original's quicksort leaves ties unspecified).
    """
    dataset = _ALIASES.get(dataset, dataset)
    is_diginetica = dataset == "diginetica"
    columns = ["session", "item", "timeframe", "eventdate"] if is_diginetica else ["user", "time", "item"]
    dataset, p = _resolve("lessr", dataset, params, clicks, columns)
    info = {"protocol": "lessr", "dataset": dataset, "params": dict(p), "raw_clicks": len(clicks)}

    if dataset == "diginetica":
        t = _ns(clicks["eventdate"]) + clicks["timeframe"].to_numpy(dtype=np.int64) * 1_000_000
        session = clicks["session"].to_numpy(dtype=np.int64)
        item, uniques = pd.factorize(clicks["item"], sort=False)
        order = _stable_order(session, t)
        session, item, t = session[order], item[order].astype(np.int64), t[order]
        keep = _group_size(session) >= p["min_session_length"]
        session, item, t = session[keep], item[keep], t[keep]
        keep = _position_in_group(session) < p["max_length"]
        session, item, t = session[keep], item[keep], t[keep]
        keep = _support(item, len(uniques)) >= p["min_item_support"]
        session, item, t = session[keep], item[keep], t[keep]
        keep = _group_size(session) >= p["min_session_length"]
        session, item, t = session[keep], item[keep], t[keep]
        end = np.maximum.reduceat(t, _group_starts(session)) if len(t) else np.zeros(0, np.int64)
        split = (t.max() if len(t) else 0) - p["test_days"] * DAY_S * NS
        is_test_session = end >= split
        info["split_time"] = float(split / NS)
    else:
        present = clicks[["user", "time", "item"]].notna().all(axis=1).to_numpy()
        df = clicks.loc[present]
        info["clicks_after_dropna"] = len(df)
        user, _ = pd.factorize(df["user"], sort=False)
        item, uniques = pd.factorize(df["item"], sort=False)
        t = _ns(df["time"])
        order = _stable_order(user, t)
        user, item, t = user[order], item[order].astype(np.int64), t[order]
        new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(t) > p["session_gap_s"] * NS)]
        session = np.cumsum(new) - 1
        keep = np.r_[True, (session[1:] != session[:-1]) | (item[1:] != item[:-1])]
        session, item, t = session[keep], item[keep], t[keep]
        keep = _position_in_group(session) < p["max_length"]
        session, item, t = session[keep], item[keep], t[keep]
        keep = np.isin(item, _top_items(item, p["top_n_items"]))
        session, item, t = session[keep], item[keep], t[keep]
        rounds = 0
        while True:
            before = len(item)
            keep = _group_size(session) >= p["min_session_length"]
            session, item, t = session[keep], item[keep], t[keep]
            keep = _support(item, len(uniques)) >= p["min_item_support"]
            session, item, t = session[keep], item[keep], t[keep]
            rounds += 1
            if len(item) == before:
                break
        info["filter_rounds"] = rounds
        starts = _group_starts(session)
        end = np.maximum.reduceat(t, starts) if len(t) else np.zeros(0, np.int64)
        n_test = int(len(end) * p["test_fraction"])
        by_end = np.argsort(end, kind="stable")
        is_test_session = np.zeros(len(end), dtype=bool)
        is_test_session[by_end[len(end) - n_test :]] = True
    info["test_sessions_before_cleaning"] = int(is_test_session.sum())
    info["filtered_clicks"] = len(item)
    info["filtered_sessions"] = int(len(_group_starts(session)))

    is_test = np.repeat(is_test_session, np.diff(np.r_[_group_starts(session), len(session)]))
    train_items = item[~is_test]
    mapping, n_items = _renumber(train_items, len(uniques))
    train, _ = _sessions_from_sorted(session[~is_test], mapping[train_items], t[~is_test])
    test_keep = is_test & (mapping[item] > 0)
    test, _ = _sessions_from_sorted(session[test_keep], mapping[item[test_keep]], t[test_keep])
    test = _drop_short(test, p["min_session_length"])
    train = train.subset(np.argsort(train.end_time, kind="stable"))
    test = test.subset(np.argsort(test.end_time, kind="stable"))
    info.update(_counts(train, test, n_items))
    return ProtocolResult(train, test, n_items, info)


def _top_items(item: np.ndarray, n: int) -> np.ndarray:
    """The n most frequent item codes; ties at the cut go to the item that appears first
    (pandas `groupby(sort=False).size().nlargest(n)`, keep='first')."""
    in_appearance_order = pd.unique(item)
    counts = np.bincount(item)[in_appearance_order]
    return in_appearance_order[np.argsort(-counts, kind="stable")[:n]]


PROTOCOLS = {"srgnn": srgnn_protocol, "lessr": lessr_protocol}
