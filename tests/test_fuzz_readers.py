"""Property-based tests of every reader and loader: any bytes, and valid files with a few mutations, give
either a valid result or one user error (a single line naming the file), never another exception, and
never leave a cache file behind. The default profile runs few examples; `SBR_FUZZ=1 pytest -m fuzz`
runs many (profiles in conftest.py)."""

import contextlib
import pickle
import tempfile
from pathlib import Path

import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from sbr_bench.data.dataset import load_dataset  # noqa: E402
from sbr_bench.data.loaders import read_click_log  # noqa: E402
from sbr_bench.data.readers import read_diginetica, read_gowalla, read_lastfm, read_yoochoose  # noqa: E402
from sbr_bench.data.sessions import SessionDataset  # noqa: E402
from sbr_bench.errors import DataFormatError, UserError  # noqa: E402

pytestmark = pytest.mark.fuzz

# Values that broke (or could break) a reader: overflowing ids, out-of-range times, stray marks.
NASTY = ["", "0", "-1", "1e23", "1e30", "9" * 30, "99999999999", "inf", "-inf", "nan", "NA", "1.5", " 7",
         "\ufeff", '"', "\x00", "é", "2016-13-45", "9999-12-31", "1e300", "-1e12", "a,b", "a;b", "a\tb", "x"]


@contextlib.contextmanager
def workdir():
    # Hypothesis runs many examples per test call, so a fresh folder per example (not tmp_path).
    with tempfile.TemporaryDirectory(prefix="sbr-fuzz-") as d:
        yield Path(d)


@st.composite
def mutated(draw, lines, sep):
    """Valid `lines` (fields joined by `sep`) after 1-4 mutations, as bytes."""
    rows = [line.split(sep) for line in lines]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "extra", "drop_field", "dup", "drop", "bom", "crlf",
                                     "blank", "cut"]))
        if not rows:
            break
        r = draw(st.integers(0, len(rows) - 1))
        if kind == "field":
            row = rows[r]
            row[draw(st.integers(0, len(row) - 1))] = draw(st.sampled_from(NASTY) | st.text(max_size=6))
        elif kind == "extra":
            rows[r].append(draw(st.sampled_from(NASTY)))
        elif kind == "drop_field" and len(rows[r]) > 1:
            rows[r].pop(draw(st.integers(0, len(rows[r]) - 1)))
        elif kind == "dup":
            rows.insert(r, list(rows[r]))
        elif kind == "drop":
            rows.pop(r)
        elif kind == "bom":
            rows[0][0] = "\ufeff" + rows[0][0] if rows else ""
        elif kind == "crlf":
            rows[r][-1] += "\r"
        elif kind == "blank":
            rows.insert(r, [""])
        elif kind == "cut":
            rows = rows[:r]
    text = "\n".join(sep.join(row) for row in rows) + draw(st.sampled_from(["\n", ""]))
    return text.encode("utf-8", errors="surrogatepass")


def raw_or_mutated(lines, sep):
    return st.binary(max_size=400) | mutated(lines, sep)


def check(fn, names):
    """fn() either returns, or raises a one-line UserError naming one of `names`; anything else fails."""
    try:
        return fn()
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, repr(msg)
        assert any(str(n) in msg for n in names), msg
        return e


# ------------------------------------------------------------------------------------------ raw readers

RAW = {
    read_diginetica: (";", ["session_id;user_id;item_id;timeframe;eventdate", "1;NA;81766;526309;2016-05-09",
                            "1;NA;31331;1031018;2016-05-09", "2;NA;32118;0;2016-05-10"]),
    read_gowalla: ("\t", ["0\t2010-10-19T23:55:27Z\t30.2\t-97.7\t22847",
                           "0\t2010-10-18T22:17:43Z\t30.2\t-97.7\t420315"]),
    read_lastfm: ("\t", ["user_000001\t2009-05-04T23:08:57Z\tf1b1cf71\tDeep Dish\t\tTrack",
                         'user_000001\t2009-05-02T14:30:56Z\t\t"Rocket Empire\t\tSimmer Down']),
    read_yoochoose: (",", ["session_id,timestamp,item_id,category", "1,2014-04-07T10:51:09.277Z,214536502,0",
                           "1,2014-04-07T10:54:09.868Z,214536500,S"]),
}


@pytest.mark.parametrize("reader", list(RAW), ids=lambda r: r.__name__)
def test_raw_readers_give_a_frame_or_one_error(reader):
    sep, lines = RAW[reader]

    @given(raw_or_mutated(lines, sep))
    def prop(data):
        with workdir() as d:
            path = d / "raw.txt"
            path.write_bytes(data)
            out = check(lambda: reader(path), [path])
            if isinstance(out, pd.DataFrame):
                assert len(out) > 0

    prop()


# ------------------------------------------------------------------------------------------ loaders

CLICKS = ["sid,item,ts"] + [f"s{k // 3},i{(k * 7) % 5},{1_600_000_000 + 60 * k}" for k in range(30)]
LESSR = ["1,2,3", "4,5", "2,6,7,1", "3,4,5,6"]
SESSIONREC = ["SessionId\tItemId\tTime", "1\t10\t1.0", "1\t11\t2.0", "2\t10\t3.0", "2\t12\t4.0", "2\t11\t5.0"]


def load_and_check(source, d, **params):
    """load_dataset on `source` with a data dir in `d`: a dataset, or one error naming the input; after an
    error no cache file (or partial file) is left."""
    data_dir = d / "data"
    out = check(lambda: load_dataset(str(source), data_dir=data_dir, **params), [source])
    if isinstance(out, UserError):
        assert not [p for p in data_dir.rglob("*") if p.is_file() and p.parent.name == "processed"]
    else:
        assert isinstance(out, SessionDataset)
    return out


@given(raw_or_mutated(CLICKS, ","))
def test_click_log_through_load_dataset(data):
    with workdir() as d:
        path = d / "log.csv"
        path.write_bytes(data)
        load_and_check(path, d, session_col="sid", item_col="item", time_col="ts")


@given(raw_or_mutated(CLICKS, ","), st.sampled_from(["sid", "item", "ts", "nope"]),
       st.sampled_from(["sid", "item", "ts"]), st.sampled_from([",", ";", "\t"]))
def test_click_log_reader_with_any_columns(data, session_col, item_col, delimiter):
    with workdir() as d:
        path = d / "log.csv"
        path.write_bytes(data)
        check(lambda: read_click_log(path, session_col, item_col, "ts", delimiter), [path])


@given(raw_or_mutated(LESSR, ","), raw_or_mutated(LESSR[:2], ","),
       st.none() | st.sampled_from([b"8", b"0", b"abc", b"99999999999", b"\xef\xbb\xbf9\n", b""]))
def test_lessr_folder_through_load_dataset(train, test, num_items):
    with workdir() as d:
        folder = d / "lessr"
        folder.mkdir()
        (folder / "train.txt").write_bytes(train)
        (folder / "test.txt").write_bytes(test)
        if num_items is not None:
            (folder / "num_items.txt").write_bytes(num_items)
        load_and_check(folder, d)


@given(raw_or_mutated(SESSIONREC, "\t"), raw_or_mutated(SESSIONREC, "\t"))
def test_sessionrec_folder_through_load_dataset(train, test):
    with workdir() as d:
        folder = d / "srec"
        folder.mkdir()
        (folder / "x_train_full.txt").write_bytes(train)
        (folder / "x_test.txt").write_bytes(test)
        load_and_check(folder, d)


IDS = st.integers(1, 9) | st.sampled_from([0, -1, 10**11, 10**23, 2**63, True, 1.5, "3", None])
SEQS = st.lists(st.lists(IDS, max_size=4) | IDS, max_size=4)
PAIRS = st.tuples(SEQS, st.lists(IDS, max_size=4)) | st.lists(SEQS, max_size=3) | SEQS


@given(SEQS, PAIRS, st.booleans(), st.binary(max_size=60))
def test_srgnn_pickles_through_load_dataset(train, test, as_pairs, junk):
    with workdir() as d:
        folder = d / "srgnn"
        folder.mkdir()
        name = "train.txt" if as_pairs else "all_train_seq.txt"
        blob = pickle.dumps(test if as_pairs else train, protocol=4)
        (folder / name).write_bytes(blob if junk[:1] != b"\x00" else b"\x80" + junk)  # sometimes garbage
        (folder / "test.txt").write_bytes(pickle.dumps(test, protocol=4))
        load_and_check(folder, d)
