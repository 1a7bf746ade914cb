"""Readers for the raw click / check-in / listening logs, vectorised with pandas.

Each reader returns a DataFrame in FILE ORDER (protocols decide how to sort) and raises exactly one
`DataFormatError(path, message, line)` naming the first bad line: wrong delimiter, wrong number of fields,
a non-integer id, an unparsable date, an empty file.

Validation is cheap: field counts are checked with numpy over the raw bytes (in chunks), then pandas parses
with explicit dtypes; only if that parse fails are the offending columns re-read as text to find the row.
All files are read with quoting disabled: none of these formats quotes fields, and Last.fm names contain
stray `"` characters that would otherwise swallow lines.
"""

from __future__ import annotations

import csv
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataFormatError

_CHUNK_BYTES = 1 << 26  # field counting reads 64 MiB at a time, so memory stays bounded on huge files
_DELIMITER_NAMES = {";": "';'", ",": "','", "\t": "TAB"}


@dataclass(frozen=True)
class _Layout:
    """How one raw format looks on disk."""

    sep: str
    names: tuple[str, ...]  # every field of a line, in order
    int_cols: tuple[str, ...] = ()  # must be integers
    date_cols: dict = field(default_factory=dict)  # column -> (pandas format, utc)
    few_dates: bool = False  # dates repeat a lot: parse each distinct string once (categorical read)
    text_cols: dict = field(default_factory=dict)  # column -> pandas dtype ("str" or "category")
    headers: tuple[tuple[str, ...], ...] = ()  # accepted header lines (a header is optional)

    @property
    def usecols(self) -> list[str]:
        wanted = set(self.int_cols) | set(self.date_cols) | set(self.text_cols)
        return [n for n in self.names if n in wanted]


DIGINETICA = _Layout(
    sep=";",
    names=("session", "user", "item", "timeframe", "eventdate"),
    int_cols=("session", "item", "timeframe"),
    date_cols={"eventdate": ("%Y-%m-%d", False)},
    few_dates=True,
    headers=(
        ("session_id", "user_id", "item_id", "timeframe", "eventdate"),
        ("sessionId", "userId", "itemId", "timeframe", "eventdate"),
    ),
)
GOWALLA = _Layout(
    sep="\t",
    names=("user", "time", "lat", "lon", "item"),
    int_cols=("user", "item"),
    date_cols={"time": ("ISO8601", True)},
)
LASTFM = _Layout(
    sep="\t",
    names=("user", "time", "item", "artname", "track", "trackname"),
    date_cols={"time": ("ISO8601", True)},
    text_cols={"user": "str", "item": "str", "artname": "category"},
)
YOOCHOOSE = _Layout(
    sep=",",
    names=("session", "time", "item", "category"),
    int_cols=("session", "item"),
    date_cols={"time": ("ISO8601", True)},
    text_cols={"category": "str"},
    headers=(("session_id", "timestamp", "item_id", "category"),),
)


def read_diginetica(path) -> pd.DataFrame:
    """`train-item-views.csv`: columns session, item, timeframe (int64 ms within the session) and
    eventdate (datetime64, midnight of the day). The user column ("NA" throughout) is not read."""
    df = _read(path, DIGINETICA)
    return df[["session", "item", "timeframe", "eventdate"]]


def read_gowalla(path) -> pd.DataFrame:
    """`loc-gowalla_totalCheckins.txt`: columns user, time (UTC), item (= location id).
    Latitude and longitude are not read (no protocol uses them), so they are not validated either."""
    df = _read(path, GOWALLA)
    return df[["user", "time", "item"]]


def read_lastfm(path) -> pd.DataFrame:
    """`userid-timestamp-artid-artname-traid-traname.tsv`: columns user, time (UTC), item (= artist MBID,
    NaN where empty, as LESSR reads column 2) and artname (categorical)."""
    df = _read(path, LASTFM)
    df["item"] = df["item"].mask(df["item"] == "")
    return df[["user", "time", "item", "artname"]]


def read_yoochoose(path) -> pd.DataFrame:
    """`yoochoose-clicks.dat`: columns session, time (UTC, ms precision), item, category (text)."""
    df = _read(path, YOOCHOOSE)
    return df[["session", "time", "item", "category"]]


READERS = {
    "diginetica": read_diginetica,
    "gowalla": read_gowalla,
    "lastfm": read_lastfm,
    "yoochoose": read_yoochoose,
}


# ---------------------------------------------------------------- implementation


def regular_file(path) -> Path:
    """`path` as a Path if it is a regular file; else one DataFormatError saying what it is instead
    (a FIFO would block the reader forever, a folder would fail with IsADirectoryError)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataFormatError(path, "file not found") from None
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataFormatError(path, "is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise DataFormatError(path, "is not a regular file (a FIFO, socket or device?), expected a file")
    return path


def _read(path, layout: _Layout) -> pd.DataFrame:
    path = regular_file(path)
    try:
        return _read_file(path, layout)
    except OSError as e:  # unreadable (permissions, I/O error): one line, not a traceback
        raise DataFormatError(path, f"cannot read the file ({e.strerror or e})") from None


def _read_file(path: Path, layout: _Layout) -> pd.DataFrame:
    first = _first_line(path)
    if not first.strip():
        raise DataFormatError(path, "file is empty (no data lines)", 1)
    has_header = tuple(f.strip() for f in first.split(layout.sep)) in layout.headers
    _check_delimiter(path, layout, first)
    n_lines = _check_field_counts(path, layout)
    if n_lines <= int(has_header):
        raise DataFormatError(path, "no data lines after the header", 2)
    df = _parse(path, layout, has_header)
    first_row = 2 if has_header else 1  # file line number of data row 0
    for col, (fmt, utc) in layout.date_cols.items():
        df[col] = _parse_dates(path, df[col], col, fmt, utc, first_row)
    return df


def _first_line(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.readline()
    # utf-8-sig: a byte-order mark (Excel, Notepad) must not hide the header; pandas skips it too.
    return raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")


def _check_delimiter(path, layout: _Layout, first: str) -> None:
    """A file with another delimiter fails on line 1: say which delimiter was expected and which found."""
    n = len(layout.names)
    if first.count(layout.sep) == n - 1:
        return
    expected = _DELIMITER_NAMES[layout.sep]
    for other in _DELIMITER_NAMES:
        if other != layout.sep and first.count(other) == n - 1:
            raise DataFormatError(
                path,
                f"expected {expected}-separated fields, found {_DELIMITER_NAMES[other]}-separated ones "
                f"({first[:80]!r})",
                1,
            )
    raise DataFormatError(
        path,
        f"expected {n} {expected}-separated fields ({', '.join(layout.names)}), "
        f"found {first.count(layout.sep) + 1}: {first[:80]!r}",
        1,
    )


def _check_field_counts(path: Path, layout: _Layout) -> int:
    """Count delimiters per line with numpy; raise on the first line with the wrong count (blank lines
    included). Returns the number of lines."""
    sep, want = ord(layout.sep), len(layout.names) - 1
    lines_before = 0
    carry = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK_BYTES)
            if not chunk:
                break
            buf = carry + chunk
            cut = buf.rfind(b"\n") + 1
            block, carry = buf[:cut], buf[cut:]
            lines_before = _check_block(path, layout, block, sep, want, lines_before)
    if carry.strip(b"\r"):  # a last line without a newline
        lines_before = _check_block(path, layout, carry + b"\n", sep, want, lines_before)
    return lines_before


def _check_block(path, layout, block: bytes, sep: int, want: int, lines_before: int) -> int:
    if not block:
        return lines_before
    arr = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(arr == ord("\n"))
    seps_before_end = np.searchsorted(np.flatnonzero(arr == sep), ends)
    counts = np.diff(seps_before_end, prepend=0)
    bad = np.flatnonzero(counts != want)
    if len(bad):
        i = int(bad[0])
        start = 0 if i == 0 else int(ends[i - 1]) + 1
        text = block[start : ends[i]].decode("utf-8", errors="replace").rstrip("\r")
        what = "an empty line" if not text.strip() else f"{int(counts[i]) + 1} fields: {text[:80]!r}"
        raise DataFormatError(
            path,
            f"expected {want + 1} {_DELIMITER_NAMES[layout.sep]}-separated fields "
            f"({', '.join(layout.names)}), found {what}",
            lines_before + i + 1,
        )
    return lines_before + len(ends)


def _parse(path: Path, layout: _Layout, has_header: bool) -> pd.DataFrame:
    dtypes = {c: "int64" for c in layout.int_cols}
    dtypes.update({c: "category" if layout.few_dates else "str" for c in layout.date_cols})
    dtypes.update(layout.text_cols)
    kwargs = dict(
        sep=layout.sep,
        header=None,
        names=list(layout.names),
        usecols=layout.usecols,
        skiprows=1 if has_header else 0,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        skip_blank_lines=False,
        engine="c",
        encoding="utf-8",
        encoding_errors="replace",
    )
    try:
        return pd.read_csv(path, dtype=dtypes, **kwargs)
    except (ValueError, OverflowError) as err:
        # Locate the first non-integer id by re-reading the integer columns as text (error path only).
        try:
            text = pd.read_csv(path, dtype="str", **dict(kwargs, usecols=list(layout.int_cols)))
        except (ValueError, OverflowError):
            text = pd.DataFrame({c: pd.Series([], dtype=str) for c in layout.int_cols})  # reported below
        first_row = 2 if has_header else 1
        worst = None
        for col in layout.int_cols:
            bad = ~text[col].str.fullmatch(r"\s*[+-]?\d{1,18}\s*").fillna(False).to_numpy(dtype=bool)
            if bad.any():
                row = int(np.argmax(bad))
                if worst is None or row < worst[0]:
                    worst = (row, col, text[col].iloc[row])
        if worst is None:
            raise DataFormatError(path, "could not parse the file: " + " ".join(str(err).split())[:200]) from None
        row, col, value = worst
        raise DataFormatError(path, f"{col} must be an integer, found {value!r}", row + first_row) from None


def _parse_dates(path, values: pd.Series, col: str, fmt: str, utc: bool, first_row: int) -> pd.Series:
    if isinstance(values.dtype, pd.CategoricalDtype):
        parsed = pd.to_datetime(values.cat.categories.astype(str), format=fmt, utc=utc, errors="coerce")
        codes = values.cat.codes.to_numpy()
        times = pd.Series(parsed.take(codes), index=values.index, name=col)  # code -1 (missing) -> NaT
        times[codes < 0] = pd.NaT
    else:
        times = pd.to_datetime(values, format=fmt, utc=utc, errors="coerce")
    bad = times.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataFormatError(
            path, f"{col} is not a date ({fmt}), found {values.iloc[row]!r}", row + first_row
        )
    return times
