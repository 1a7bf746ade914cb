import numpy as np
import pandas as pd
import pytest

from sbr_bench.data.readers import read_diginetica, read_gowalla, read_lastfm, read_yoochoose
from sbr_bench.errors import DataFormatError

from tests.conftest import shared_path

DIGI_ROWS = ["1;NA;81766;526309;2016-05-09", "1;NA;31331;1031018;2016-05-09", "2;NA;32118;0;2016-05-10"]


def write(tmp_path, name, lines, end="\n"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + end, encoding="utf-8")
    return path


def raises_at(fn, path, line, *words):
    with pytest.raises(DataFormatError) as err:
        fn(path)
    msg = str(err.value)
    assert err.value.line == line, msg
    assert str(path) in msg and f"line {line}" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize(
    "header", ["session_id;user_id;item_id;timeframe;eventdate", "sessionId;userId;itemId;timeframe;eventdate", None]
)
def test_diginetica_header_variants_give_the_same_frame(tmp_path, header):
    lines = ([header] if header else []) + DIGI_ROWS
    df = read_diginetica(write(tmp_path, "d.csv", lines))
    assert list(df.columns) == ["session", "item", "timeframe", "eventdate"]
    assert df["session"].tolist() == [1, 1, 2] and df["item"].tolist() == [81766, 31331, 32118]
    assert df["timeframe"].dtype == np.int64 and df["timeframe"].tolist() == [526309, 1031018, 0]
    assert df["eventdate"].dt.strftime("%Y-%m-%d").tolist() == ["2016-05-09", "2016-05-09", "2016-05-10"]


def test_diginetica_keeps_file_order_and_last_line_without_newline(tmp_path):
    lines = ["2;NA;5;10;2016-05-10", "1;NA;6;20;2016-05-09", "2;NA;7;5;2016-05-10"]
    df = read_diginetica(write(tmp_path, "d.csv", lines, end=""))
    assert df["session"].tolist() == [2, 1, 2] and df["timeframe"].tolist() == [10, 20, 5]


def test_diginetica_errors_name_file_and_line(tmp_path):
    head = "session_id;user_id;item_id;timeframe;eventdate"
    p = write(tmp_path, "few.csv", [head, DIGI_ROWS[0], "1;NA;31331;2016-05-09", DIGI_ROWS[2]])
    raises_at(read_diginetica, p, 3, "expected 5", "found 4 fields")
    p = write(tmp_path, "many.csv", [head, DIGI_ROWS[0], DIGI_ROWS[1], "2;NA;1;2;2016-05-10;x"])
    raises_at(read_diginetica, p, 4, "found 6 fields")
    p = write(tmp_path, "id.csv", [head, DIGI_ROWS[0], "1;NA;abc;5;2016-05-09", DIGI_ROWS[2]])
    raises_at(read_diginetica, p, 3, "item", "'abc'")
    p = write(tmp_path, "date.csv", [head, DIGI_ROWS[0], DIGI_ROWS[1], "2;NA;1;2;2016-13-45"])
    raises_at(read_diginetica, p, 4, "eventdate", "2016-13-45")
    p = write(tmp_path, "blank.csv", [head, DIGI_ROWS[0], "", DIGI_ROWS[2]])
    raises_at(read_diginetica, p, 3, "empty line")
    p = write(tmp_path, "empty.csv", [], end="")
    raises_at(read_diginetica, p, 1, "empty")
    p = write(tmp_path, "only_header.csv", [head])
    raises_at(read_diginetica, p, 2, "no data")


def test_diginetica_wrong_delimiter_says_expected_and_found(tmp_path):
    p = write(tmp_path, "comma.csv", [r.replace(";", ",") for r in DIGI_ROWS])
    raises_at(read_diginetica, p, 1, "expected ';'", "found ','")


def test_gowalla_reader_and_errors(tmp_path):
    rows = ["0\t2010-10-19T23:55:27Z\t30.2\t-97.7\t22847", "0\t2010-10-18T22:17:43Z\t30.2\t-97.7\t420315"]
    df = read_gowalla(write(tmp_path, "g.txt", rows))
    assert list(df.columns) == ["user", "time", "item"] and df["item"].tolist() == [22847, 420315]
    assert str(df["time"].dt.tz) == "UTC" and df["time"].iloc[0] == pd.Timestamp("2010-10-19 23:55:27", tz="UTC")
    raises_at(read_gowalla, write(tmp_path, "c.txt", [r.replace("\t", ",") for r in rows]), 1, "TAB", "','")
    raises_at(read_gowalla, write(tmp_path, "t.txt", [rows[0], "0\tyesterday\t1\t2\t3"]), 2, "time", "yesterday")
    raises_at(read_gowalla, write(tmp_path, "u.txt", [rows[0], rows[1], "x\t2010-10-18T22:17:43Z\t1\t2\t3"]), 3, "user")
    raises_at(read_gowalla, write(tmp_path, "f.txt", [rows[0], "0\t2010-10-18T22:17:43Z\t1\t2"]), 2, "found 4")
    raises_at(read_gowalla, write(tmp_path, "e.txt", [], end=""), 1, "empty")


def test_lastfm_empty_mbid_is_nan_and_quotes_do_not_swallow_lines(tmp_path):
    rows = [
        "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71\tDeep Dish\t\tTrack",
        'user_000001\t2009-05-02T14:30:56Z\t\t"Rocket Empire\t\tSimmer Down',
        "user_000002\t2009-05-01T10:00:00Z\ta7f7df4a\t坂本龍一\tt1\tComposition",
    ]
    df = read_lastfm(write(tmp_path, "l.tsv", rows))
    assert len(df) == 3 and list(df.columns) == ["user", "time", "item", "artname"]
    assert df["item"].isna().tolist() == [False, True, False]
    assert df["user"].tolist() == ["user_000001", "user_000001", "user_000002"]
    assert df["artname"].astype(str).tolist() == ["Deep Dish", '"Rocket Empire', "坂本龍一"]
    raises_at(read_lastfm, write(tmp_path, "bad.tsv", [rows[0], "user_1\t2009-05-04T23:08:57Z\tx\ty\tz"]), 2, "found 5")
    raises_at(read_lastfm, write(tmp_path, "bad2.tsv", rows[:2] + ["u\tnot-a-time\ta\tb\tc\td"]), 3, "time")
    raises_at(read_lastfm, write(tmp_path, "e.tsv", ["", ""]), 1, "empty")


def test_yoochoose_reader_and_errors(tmp_path):
    rows = ["1,2014-04-07T10:51:09.277Z,214536502,0", "1,2014-04-07T10:54:09.868Z,214536500,S"]
    for lines in (rows, ["session_id,timestamp,item_id,category"] + rows):
        df = read_yoochoose(write(tmp_path, "y.dat", lines))
        assert df["item"].tolist() == [214536502, 214536500] and df["category"].astype(str).tolist() == ["0", "S"]
        assert df["time"].iloc[0] == pd.Timestamp("2014-04-07 10:51:09.277", tz="UTC")
    raises_at(read_yoochoose, write(tmp_path, "s.dat", [r.replace(",", ";") for r in rows]), 1, "expected ','", "';'")
    raises_at(read_yoochoose, write(tmp_path, "i.dat", [rows[0], "1,2014-04-07T10:54:09.868Z,1.5,0"]), 2, "item")


@pytest.mark.parametrize(
    "reader, rel, n, n_keys",
    [
        (read_diginetica, "diginetica/raw_sample/sample_train-item-views.csv", 12391, 2986),
        (read_gowalla, "gowalla/raw_sample/loc-gowalla_totalCheckins.txt", 10000, 48),
        (read_lastfm, "lastfm/raw_sample/userid-timestamp-artid-artname-traid-traname.tsv", 5000, 2),
        (read_yoochoose, "yoochoose/raw_sample/yoochoose-clicks-sample.dat", 500, 125),
    ],
)
def test_real_raw_samples_parse_with_published_counts(reader, rel, n, n_keys):
    df = reader(shared_path(rel))
    assert len(df) == n
    assert df[df.columns[0]].nunique() == n_keys
    if reader is read_lastfm:
        assert int(df["item"].isna().sum()) == 353  # PROVENANCE: rows with an empty artist MBID


def test_windows_line_endings_are_accepted(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"sessionId;userId;itemId;timeframe;eventdate\r\n1;NA;5;10;2016-05-10\r\n1;NA;6;20;2016-05-10\r\n")
    df = read_diginetica(path)
    assert df["item"].tolist() == [5, 6] and df["eventdate"].dt.day.tolist() == [10, 10]


def test_utf8_bom_before_the_header_is_stripped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfsessionId;userId;itemId;timeframe;eventdate\n1;NA;5;10;2016-05-10\n")
    assert read_diginetica(path)["item"].tolist() == [5]


def test_a_folder_or_fifo_instead_of_a_file_is_one_error(tmp_path):
    import os

    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataFormatError, match=r"dir.csv: is a folder, expected a file"):
        read_diginetica(tmp_path / "dir.csv")
    os.mkfifo(tmp_path / "fifo.csv")  # opening it would block forever
    with pytest.raises(DataFormatError, match=r"fifo.csv: is not a regular file"):
        read_gowalla(tmp_path / "fifo.csv")


def test_unreadable_file_is_one_error(tmp_path, monkeypatch):
    import builtins

    path = write(tmp_path, "d.csv", DIGI_ROWS)
    real_open = builtins.open

    def deny(file, *args, **kwargs):  # tests run as root, where chmod 000 does not stop reading
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(DataFormatError, match=r"d.csv: cannot read the file \(Permission denied\)"):
        read_diginetica(path)
