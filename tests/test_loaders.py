"""Readers of preprocessed layouts and click logs, on hand-made tiny files (plus the shared real splits)."""

import pickle

import numpy as np
import pytest

from conftest import shared_path
from sbr_bench.data.dataset import assemble
from sbr_bench.data.loaders import (
    detect_layout, load_lessr, load_preprocessed, load_sessionrec, load_srgnn, pairs_to_sessions,
    read_click_log,
)
from sbr_bench.data.sessions import Split
from sbr_bench.errors import DataFormatError, UserError

TRAIN = [[1, 2, 3], [4, 5], [2, 6, 7, 1]]
TEST = [[1, 2, 3, 4], [5, 6], [7, 1, 2]]


def augment(sessions, order="longest-first", min_prefix=1):
    prefixes, targets = [], []
    for s in sessions:
        ks = range(min_prefix, len(s))
        for k in reversed(ks) if order == "longest-first" else ks:
            prefixes.append(s[:k])
            targets.append(s[k])
    return prefixes, targets


def write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=4))


def write_srgnn(folder, order="longest-first", container=tuple, min_prefix=1, all_train=True):
    folder.mkdir(parents=True, exist_ok=True)
    if all_train:
        write_pickle(folder / "all_train_seq.txt", TRAIN)
    else:
        write_pickle(folder / "train.txt", container(augment(TRAIN, order)))
    write_pickle(folder / "test.txt", container(augment(TEST, order, min_prefix)))
    return folder


# ------------------------------------------------------------------------------------------ SR-GNN


@pytest.mark.parametrize("order", ["longest-first", "shortest-first"])
@pytest.mark.parametrize("container", [tuple, list])
def test_srgnn_pickles_keep_pairs_and_rebuild_sessions(tmp_path, order, container):
    folder = write_srgnn(tmp_path / "d", order, container)
    assert detect_layout(folder) == "srgnn"
    loaded = load_srgnn(folder)
    assert loaded.train.to_lists() == TRAIN
    assert isinstance(loaded.test, Split)
    assert loaded.test.pairs() == augment(TEST, order)
    assert loaded.test.sessions.to_lists() == TEST  # whole sessions, for statistics
    assert loaded.info["test_pair_order"] == order
    assert loaded.n_items == 7


def test_srgnn_heldout_variant_with_prefixes_from_length_two(tmp_path):
    folder = write_srgnn(tmp_path / "d", "shortest-first", list, min_prefix=2)
    loaded = load_srgnn(folder)
    prefixes, targets = loaded.test.pairs()
    assert (prefixes, targets) == augment(TEST, "shortest-first", 2)
    assert min(len(p) for p in prefixes) == 2  # no length-1 examples are made up
    ds = assemble("d", loaded, 0.0, {})
    stats = ds.stats()
    # Clicks count whole sessions (train + rebuilt test; [5, 6] has no pair here, so it is not
    # there), examples count the published pairs only.
    assert loaded.test.sessions.to_lists() == [[1, 2, 3, 4], [7, 1, 2]]
    assert stats["clicks"] == sum(map(len, TRAIN)) + 4 + 3
    assert stats["test_examples"] == len(targets) == 3


def test_srgnn_train_pairs_only_rebuilds_train_sessions(tmp_path):
    folder = write_srgnn(tmp_path / "d", "longest-first", tuple, all_train=False)
    loaded = load_preprocessed(folder / "test.txt")  # a file inside the folder selects the folder
    assert loaded.train.to_lists() == TRAIN
    assert loaded.files[0].name == "train.txt"


def test_pairs_out_of_order_stay_exact():
    prefixes, targets = augment(TEST, "shortest-first")
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(targets))
    p = [prefixes[i] for i in perm]
    t = [targets[i] for i in perm]
    sessions, ex_seq, ex_len, _ = pairs_to_sessions(p, t)
    split = Split(sessions, ex_seq, ex_len)
    assert split.pairs() == (p, t)


def test_malformed_pickle_names_the_file(tmp_path):
    folder = write_srgnn(tmp_path / "d")
    data = (folder / "test.txt").read_bytes()
    (folder / "test.txt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="test.txt"):
        load_srgnn(folder)


def test_pickle_with_objects_is_refused(tmp_path):
    folder = write_srgnn(tmp_path / "d")
    write_pickle(folder / "all_train_seq.txt", [np.array([1, 2])])  # needs numpy globals to load
    with pytest.raises(DataFormatError, match="all_train_seq.txt.*only plain"):
        load_srgnn(folder)


@pytest.mark.parametrize("bad, message", [
    ({"a": 1}, "tuple or 2-element list"),
    (([[1, 2]], [3, 4]), "same length"),
    (([[0, 2]], [3]), "ids must be integers >= 1"),
    (([[1, "x"]], [3]), "ids must be integers"),
])
def test_bad_pair_containers(tmp_path, bad, message):
    folder = write_srgnn(tmp_path / "d")
    write_pickle(folder / "test.txt", bad)
    with pytest.raises(DataFormatError, match=message):
        load_srgnn(folder)


# ------------------------------------------------------------------------------------------ LESSR


def write_lines(path, seqs, trailing_newline=True):
    text = "\n".join(",".join(map(str, s)) for s in seqs)
    path.write_text(text + ("\n" if trailing_newline else ""))


def test_lessr_zero_based_shifts_ids_and_reads_num_items_without_newline(tmp_path):
    write_lines(tmp_path / "train.txt", [[i - 1 for i in s] for s in TRAIN])
    write_lines(tmp_path / "test.txt", [[i - 1 for i in s] for s in TEST], trailing_newline=False)
    (tmp_path / "num_items.txt").write_text("9")  # ids may be unused at the top; no trailing newline
    assert detect_layout(tmp_path) == "lessr"
    loaded = load_lessr(tmp_path)
    assert loaded.info["id_base"] == 0
    assert loaded.train.to_lists() == TRAIN and loaded.test.to_lists() == TEST
    assert loaded.n_items == 9


def test_lessr_one_based_copies_count_the_unused_zero(tmp_path):
    write_lines(tmp_path / "train.txt", TRAIN)
    write_lines(tmp_path / "test.txt", TEST)
    write_lines(tmp_path / "valid.txt", [[3, 4, 5]])
    (tmp_path / "num_items.txt").write_text("8\n")  # = max id + 1
    loaded = load_lessr(tmp_path)
    assert loaded.info["id_base"] == 1 and loaded.n_items == 7
    assert loaded.train.to_lists() == TRAIN and loaded.valid.to_lists() == [[3, 4, 5]]
    ds = assemble("d", loaded, 0.5, {})
    assert ds.valid.sessions.to_lists() == [[3, 4, 5]]  # the shipped validation split wins
    assert len(ds.train) == sum(len(s) - 1 for s in TRAIN)


def test_lessr_id_base_override_and_num_items_too_small(tmp_path):
    write_lines(tmp_path / "train.txt", TRAIN)
    write_lines(tmp_path / "test.txt", TEST)
    assert load_lessr(tmp_path, id_base=0).train.to_lists() == [[i + 1 for i in s] for s in TRAIN]
    (tmp_path / "num_items.txt").write_text("5")
    with pytest.raises(DataFormatError, match="num_items.txt.*too small"):
        load_lessr(tmp_path)


def test_lessr_bad_line_names_file_and_line(tmp_path):
    write_lines(tmp_path / "train.txt", TRAIN)
    (tmp_path / "test.txt").write_text("1,2,3\n4,x,5\n")
    with pytest.raises(DataFormatError, match=r"test.txt, line 2: not a comma-separated"):
        load_lessr(tmp_path)


def test_lessr_empty_file(tmp_path):
    write_lines(tmp_path / "train.txt", TRAIN)
    (tmp_path / "test.txt").write_text("")
    with pytest.raises(DataFormatError, match="test.txt: file is empty"):
        load_lessr(tmp_path)


def test_unknown_folder_lists_what_was_expected(tmp_path):
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(UserError, match=r"no known dataset layout \(found: notes.md\).*SR-GNN pickles"):
        load_preprocessed(tmp_path)


# ------------------------------------------------------------------------------------------ session-rec


def test_sessionrec_events(tmp_path):
    header = "SessionId\tItemId\tTime\n"
    # Session 7 ends after session 3, so it comes second; clicks within a session go by time.
    (tmp_path / "x_train_full.txt").write_text(
        header + "7\t100\t50.0\n3\t200\t10.0\n3\t100\t5.0\n7\t300\t40.0\n")
    (tmp_path / "x_test.txt").write_text(
        header + "9\t300\t60.0\n9\t999\t61.0\n9\t200\t62.0\n10\t100\t70.0\n10\t555\t71.0\n")
    assert detect_layout(tmp_path) == "sessionrec"
    loaded = load_sessionrec(tmp_path)
    # Items numbered by first appearance in the time-ordered train: 100 -> 1, 200 -> 2, 300 -> 3.
    assert loaded.train.to_lists() == [[1, 2], [3, 1]]
    assert loaded.train.end_time.tolist() == [10.0, 50.0]
    # Unknown items deleted; session 10 is left with one click and dropped.
    assert loaded.test.to_lists() == [[3, 2]]
    assert loaded.n_items == 3


def test_sessionrec_bad_header(tmp_path):
    (tmp_path / "x_train_full.txt").write_text("SessionId\tItemId\tTime\n1\t2\t3.0\n")
    (tmp_path / "x_test.txt").write_text("SessionId\tItemId\tTime\n1\tabc\t3.0\n")
    with pytest.raises(DataFormatError, match="x_test.txt"):
        load_sessionrec(tmp_path)


# ------------------------------------------------------------------------------------------ click log


def test_click_log_iso_and_numeric_times(tmp_path):
    iso = tmp_path / "iso.csv"
    iso.write_text("sid;item;ts\na;x;2020-01-01T00:00:10Z\na;y;2020-01-01T00:00:20Z\n")
    df = read_click_log(iso, "sid", "item", "ts", delimiter=";")
    assert list(df.columns) == ["session", "time", "item"]
    assert (df["time"].diff().dt.total_seconds().iloc[1]) == 10.0
    num = tmp_path / "num.csv"
    num.write_text("sid,item,ts\na,x,1577836810\n")
    df = read_click_log(num, "sid", "item", "ts")
    assert str(df["time"].iloc[0]) == "2020-01-01 00:00:10+00:00"


def test_click_log_errors_name_the_columns(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("sid,item,ts\na,x,yesterday\n")
    with pytest.raises(UserError, match=r"'session' not in the header \['sid', 'item', 'ts'\]"):
        read_click_log(log, "session", "item", "ts")
    with pytest.raises(DataFormatError, match="'yesterday' is neither"):
        read_click_log(log, "sid", "item", "ts")
    with pytest.raises(UserError, match="time_col: .* needs the names of its time column"):
        read_click_log(log, "sid", "item", None)


def test_click_log_short_lines_are_errors_and_empty_fields_are_skipped(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("sid,item,ts\na,x,1577836810\n\nb,y,\na,z,1577836820\nb,y\n")
    with pytest.raises(DataFormatError, match=r"line 6: expected 3 ','-separated fields like the header, found 2"):
        read_click_log(log, "sid", "item", "ts")
    log.write_text("sid,item,ts\na,x,1577836810\n\nb,y,\na,z,1577836820\n")
    assert list(read_click_log(log, "sid", "item", "ts")["item"]) == ["x", "z"]  # blank and empty: skipped


# ------------------------------------------------------------------------------------------ real splits


def test_diginetica_srgnn_protocol_counts():
    loaded = load_preprocessed(shared_path("diginetica/srgnn_protocol"))
    assert loaded.n_items == 43_097
    assert len(loaded.train) == 186_670
    assert len(loaded.test) == 60_858
    assert len(loaded.test.sessions) == 15_963  # as PROVENANCE counts the rebuilt test sessions
    assert loaded.info["test_pair_order"] == "longest-first"


def test_srgnn_golden_sample_train_pairs_match_whole_sessions():
    folder = shared_path("diginetica/srgnn_protocol_on_raw_sample")
    from sbr_bench.data.loaders import read_srgnn_pairs

    whole = load_srgnn(folder).train
    rebuilt, _, _, _ = pairs_to_sessions(*read_srgnn_pairs(folder / "train.txt"))
    assert sorted(rebuilt.to_lists()) == sorted(whole.to_lists())


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("value", ["inf", "1e300", "-1e12", "1e23"])
def test_click_log_times_out_of_range_name_value_and_line(tmp_path, value):
    log = tmp_path / "log.csv"
    log.write_text(f"sid,item,ts\na,x,5\na,y,{value}\n")
    with pytest.raises(DataFormatError, match=rf"log.csv, line 3: column 'ts': '{value}' is out of the range"):
        read_click_log(log, "sid", "item", "ts")


def test_click_log_bad_iso_date_names_the_bad_value(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("sid,item,ts\na,x,2020-01-01T00:00:00Z\na,y,2020-13-45\n")
    with pytest.raises(DataFormatError, match=r"log.csv, line 3: column 'ts': '2020-13-45' is neither"):
        read_click_log(log, "sid", "item", "ts")


def test_click_log_same_column_twice(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("sid,item,ts\na,x,1\n")
    with pytest.raises(UserError, match=r"session_col and item_col both name the column 'sid'"):
        read_click_log(log, "sid", "sid", "ts")


@pytest.mark.parametrize("rows, line", [("a,x,1\na,y,2,3\nb,z,4\n", 3), ("a,x,1,9\na,y,2,3\n", 2)])
def test_click_log_extra_field_names_the_line(tmp_path, rows, line):
    log = tmp_path / "log.csv"
    log.write_text("sid,item,ts\n" + rows)
    with pytest.raises(DataFormatError, match=rf"log.csv, line {line}: expected 3 ','-separated fields.*found 4"):
        read_click_log(log, "sid", "item", "ts")


def test_click_log_that_the_protocol_empties_is_an_error(tmp_path):
    from sbr_bench.data.dataset import load_dataset

    log = tmp_path / "log.csv"
    log.write_text("sid,item,ts\na," + "x" * 3_000_000 + ",1\n")  # one huge line: one click, no session
    with pytest.raises(DataFormatError, match=r"log.csv: 1 clicks read, but no training session is left"):
        load_dataset(str(log), data_dir=tmp_path / "data", session_col="sid", item_col="item", time_col="ts")
    assert not list((tmp_path / "data").rglob("*.npz"))


@pytest.mark.parametrize("big", ["99999999999", "9" * 30])
def test_lessr_huge_id_without_num_items_is_refused(tmp_path, big):
    write_lines(tmp_path / "train.txt", TRAIN)
    (tmp_path / "test.txt").write_text(f"1,2\n3,{big}\n")
    with pytest.raises(DataFormatError, match=rf"test.txt, line 2: item id {big} is far beyond the 8 distinct"):
        load_lessr(tmp_path)


def test_lessr_huge_num_items_is_refused(tmp_path):
    write_lines(tmp_path / "train.txt", TRAIN)
    write_lines(tmp_path / "test.txt", TEST)
    (tmp_path / "num_items.txt").write_text("99999999999\n")
    with pytest.raises(DataFormatError, match=r"num_items.txt, line 1: num_items 99999999999 is far beyond"):
        load_lessr(tmp_path)


def test_srgnn_huge_id_is_refused(tmp_path):
    folder = write_srgnn(tmp_path / "d")
    write_pickle(folder / "all_train_seq.txt", TRAIN + [[1, 10**23]])
    with pytest.raises(DataFormatError, match=r"all_train_seq.txt: item id 10{23} is far beyond"):
        load_srgnn(folder)


def test_sessionrec_id_beyond_int64(tmp_path):
    (tmp_path / "x_train_full.txt").write_text("SessionId\tItemId\tTime\n1\t2\t3.0\n1\t3\t4.0\n")
    (tmp_path / "x_test.txt").write_text("SessionId\tItemId\tTime\n1\t" + "9" * 30 + "\t3.0\n")
    with pytest.raises(DataFormatError, match="x_test.txt: not a session-rec event file"):
        load_sessionrec(tmp_path)


def test_lessr_utf8_bom_is_stripped(tmp_path):
    (tmp_path / "train.txt").write_bytes(b"\xef\xbb\xbf1,2,3\n4,5\n")
    (tmp_path / "test.txt").write_bytes(b"\xef\xbb\xbf1,2\n")
    assert load_lessr(tmp_path).train.to_lists() == [[1, 2, 3], [4, 5]]


def test_folder_or_fifo_where_a_file_is_expected(tmp_path):
    import os

    from sbr_bench.data.dataset import load_dataset

    lessr = tmp_path / "l"
    lessr.mkdir()
    (lessr / "train.txt").mkdir()  # a folder named like the file
    (lessr / "test.txt").write_text("1,2\n")
    with pytest.raises(DataFormatError, match=r"train.txt: is a folder, expected a file"):
        load_dataset(str(lessr), data_dir=tmp_path / "data")
    srgnn = write_srgnn(tmp_path / "s")
    (srgnn / "test.txt").unlink()
    os.mkfifo(srgnn / "test.txt")  # opening it would block forever
    with pytest.raises(DataFormatError, match=r"test.txt: is not a regular file"):
        load_dataset(str(srgnn), data_dir=tmp_path / "data")
    with pytest.raises(DataFormatError, match=r"test.txt: is not a regular file"):
        load_srgnn(srgnn)
    log = tmp_path / "log.csv"
    os.mkfifo(log)
    with pytest.raises(DataFormatError, match=r"log.csv: is not a regular file"):
        read_click_log(log, "sid", "item", "ts")
    assert not list((tmp_path / "data").rglob("*.npz"))


def test_unreadable_file_is_one_error(tmp_path, monkeypatch):
    import builtins

    write_lines(tmp_path / "train.txt", TRAIN)
    write_lines(tmp_path / "test.txt", TEST)
    real_open = builtins.open

    def deny(file, *args, **kwargs):  # tests run as root, where chmod 000 does not stop reading
        if str(file).endswith("test.txt"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(DataFormatError, match=r"test.txt: cannot read the file \(Permission denied\)"):
        load_lessr(tmp_path)
