"""The dataset source registry: fetch + extraction + trust-on-first-use, against a server on 127.0.0.1."""

import dataclasses
import gzip
import hashlib
import io
import sys
import tarfile
import types
import zipfile

import pytest

from sbr_bench.data.sources import CHECKSUM_FILE, SOURCES, get_source
from sbr_bench.errors import UserError
from test_download import LocalServer, closed_port_url, payload

RAW = b"0\t2010-10-19T23:55:27Z\t30.2\t-97.7\t22847\n" * 2000  # stands in for a raw file


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_gz_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_registry_lists_the_four_datasets():
    assert sorted(SOURCES) == ["diginetica", "gowalla", "lastfm", "yoochoose"]
    members = {n: s.member for n, s in SOURCES.items()}
    assert members == {"diginetica": "train-item-views.csv", "gowalla": "loc-gowalla_totalCheckins.txt",
                       "lastfm": "userid-timestamp-artid-artname-traid-traname.tsv",
                       "yoochoose": "yoochoose-clicks.dat"}
    assert {n: s.default_protocol for n, s in SOURCES.items()} == {
        "diginetica": "lessr", "gowalla": "lessr", "lastfm": "lessr", "yoochoose": "srgnn"}
    assert {n: s.reader for n, s in SOURCES.items()} == {n: f"read_{n}" for n in SOURCES}
    assert {n: s.archive_kind for n, s in SOURCES.items()} == {
        "diginetica": ".zip", "gowalla": ".gz", "lastfm": ".tar.gz", "yoochoose": ".7z"}
    assert SOURCES["gowalla"].urls == ("https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz",)
    for s in SOURCES.values():
        assert s.urls and all(u.startswith(("http://", "https://")) for u in s.urls)
        assert s.sha256 is None or len(s.sha256) == 64
        assert s.homepage and s.licence


def test_unknown_source_lists_known_names():
    with pytest.raises(UserError) as err:
        get_source("movielens")
    msg = str(err.value)
    assert "'movielens'" in msg and "diginetica, gowalla, lastfm, yoochoose" in msg
    assert get_source(" Gowalla ") is SOURCES["gowalla"]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_manual_instructions_name_raw_folder_and_file(name, tmp_path):
    src = SOURCES[name]
    text = src.manual_instructions(tmp_path)
    assert f"'{tmp_path / name / 'raw'}/'" in text and f"'{src.member}'" in text
    assert src.urls[0] in text
    assert src.raw_path(tmp_path) == tmp_path / name / "raw" / src.member


def test_fetch_gz_extracts_and_records_digests(server, tmp_path):
    gz = gzip.compress(RAW)
    server.files["/g.txt.gz"] = gz
    src = get_source("gowalla")
    raw = src.fetch(tmp_path, url=server.url("/g.txt.gz"), progress=False)
    assert raw == tmp_path / "gowalla" / "raw" / "loc-gowalla_totalCheckins.txt"
    assert raw.read_bytes() == RAW
    record = (tmp_path / "gowalla" / "raw" / CHECKSUM_FILE).read_text().splitlines()
    assert sorted(record) == sorted([f"{sha(gz)}  loc-gowalla_totalCheckins.txt.gz",
                                     f"{sha(RAW)}  loc-gowalla_totalCheckins.txt"])
    assert src.verify(tmp_path) == {"loc-gowalla_totalCheckins.txt.gz": sha(gz),
                                    "loc-gowalla_totalCheckins.txt": sha(RAW)}
    # present raw file: returned without touching the network
    assert src.fetch(tmp_path, url=closed_port_url(), progress=False) == raw
    assert len(server.requests) == 1


def test_trust_on_first_use_rejects_a_changed_download(server, tmp_path):
    server.files["/g.txt.gz"] = gzip.compress(RAW)
    src = get_source("gowalla")
    raw = src.fetch(tmp_path, url=server.url("/g.txt.gz"), progress=False)
    raw.unlink()
    src.archive_path(tmp_path).unlink()
    server.files["/g.txt.gz"] = gzip.compress(RAW + b"1\t2010-10-19T23:55:27Z\t0\t0\t7\n")
    with pytest.raises(UserError, match=f"checksum mismatch.*recorded on the first download in .*{CHECKSUM_FILE}"):
        src.fetch(tmp_path, url=server.url("/g.txt.gz"), progress=False)
    assert not raw.exists() and not src.archive_path(tmp_path).exists()


def test_trust_on_first_use_checks_a_hand_placed_archive(tmp_path):
    src = get_source("gowalla")
    raw_dir = src.raw_dir(tmp_path)
    raw_dir.mkdir(parents=True)
    (raw_dir / CHECKSUM_FILE).write_text(f"{'a' * 64}  {src.archive}\n")
    src.archive_path(tmp_path).write_bytes(gzip.compress(RAW))
    with pytest.raises(UserError) as err:
        src.fetch(tmp_path, url=closed_port_url(), progress=False)
    assert "recorded on first download" in str(err.value) and CHECKSUM_FILE in str(err.value)
    (raw_dir / CHECKSUM_FILE).unlink()  # the user chooses to trust the new file
    assert src.fetch(tmp_path, url=closed_port_url(), progress=False).read_bytes() == RAW


def test_fetch_zip_extracts_nested_member(server, tmp_path):
    server.files["/d.zip"] = zip_bytes({"dataset-train-diginetica/train-item-views.csv": RAW,
                                        "dataset-train-diginetica/products.csv": b"x"})
    raw = get_source("diginetica").fetch(tmp_path, url=server.url("/d.zip"), progress=False)
    assert raw == tmp_path / "diginetica" / "raw" / "train-item-views.csv" and raw.read_bytes() == RAW


def test_fetch_zip_that_is_a_web_page(server, tmp_path):
    server.files["/d.zip"] = b"<html><body>Google Drive can't scan this file for viruses</body></html>"
    with pytest.raises(UserError) as err:
        get_source("diginetica").fetch(tmp_path, url=server.url("/d.zip"), progress=False)
    msg = str(err.value)
    assert "not a readable .zip archive" in msg and "train-item-views.csv" in msg
    assert str(tmp_path / "diginetica" / "raw") in msg
    assert not (tmp_path / "diginetica" / "raw" / CHECKSUM_FILE).exists()  # nothing trusted yet
    assert not get_source("diginetica").archive_path(tmp_path).exists()  # the web page was not kept


def test_hand_placed_broken_archive_is_kept(tmp_path):
    src = get_source("diginetica")
    src.raw_dir(tmp_path).mkdir(parents=True)
    src.archive_path(tmp_path).write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .zip archive"):
        src.fetch(tmp_path, url=closed_port_url(), progress=False)
    assert src.archive_path(tmp_path).exists()  # the user's own file is never deleted


def test_fetch_zip_without_the_member(server, tmp_path):
    server.files["/d.zip"] = zip_bytes({"train-queries.csv": b"x"})
    with pytest.raises(UserError, match="has no file named 'train-item-views.csv'.*train-queries.csv"):
        get_source("diginetica").fetch(tmp_path, url=server.url("/d.zip"), progress=False)


def test_fetch_tar_gz_checks_published_md5(server, tmp_path):
    member = "lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv"
    server.files["/l.tar.gz"] = tar_gz_bytes({"lastfm-dataset-1K/README.txt": b"r", member: RAW})
    published = get_source("lastfm")
    with pytest.raises(UserError, match=f"expected md5 {published.member_md5}"):  # our stand-in is not the real file
        published.fetch(tmp_path, url=server.url("/l.tar.gz"), progress=False)
    assert not published.raw_path(tmp_path).exists()
    stand_in = dataclasses.replace(published, member_md5=hashlib.md5(RAW).hexdigest())
    raw = stand_in.fetch(tmp_path, url=server.url("/l.tar.gz"), progress=False)
    assert raw.read_bytes() == RAW


def test_fetch_7z_downloads_then_asks_for_manual_extraction(server, tmp_path):
    server.files["/y.7z"] = payload(5000)
    src = get_source("yoochoose")
    with pytest.raises(UserError) as err:
        src.fetch(tmp_path, url=server.url("/y.7z"), progress=False)
    msg = str(err.value)
    assert "yoochoose-clicks.dat" in msg and f"'{src.raw_dir(tmp_path)}/'" in msg and "7z e" in msg
    assert src.archive_path(tmp_path).read_bytes() == payload(5000)
    src.raw_path(tmp_path).write_bytes(RAW)  # the user extracts it
    assert src.fetch(tmp_path, url=closed_port_url(), progress=False) == src.raw_path(tmp_path)


def test_fetch_unreachable_gives_manual_instructions(tmp_path):
    src = get_source("lastfm")
    with pytest.raises(UserError) as err:
        src.fetch(tmp_path, url=closed_port_url("/l.tar.gz"), progress=False, retries=0, timeout=2)
    msg = str(err.value)
    raw_dir = tmp_path / "lastfm" / "raw"
    assert f"'{raw_dir}/'" in msg and f"'{src.member}'" in msg and f"'{src.archive}'" in msg
    assert "non-commercial" in msg
    assert not any(raw_dir.iterdir())  # no .part, no archive, no SHA256


def test_read_calls_the_reader_by_name(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("sbr_bench.data.readers")
    fake.read_gowalla = lambda path: calls.append(path) or "frame"
    monkeypatch.setitem(sys.modules, "sbr_bench.data.readers", fake)
    src = get_source("gowalla")
    assert src.read(tmp_path / "x.txt") == "frame"
    assert src.read(data_dir=tmp_path) == "frame"
    assert calls == [tmp_path / "x.txt", src.raw_path(tmp_path)]
    with pytest.raises(UserError, match="has no read_lastfm"):
        get_source("lastfm").read(tmp_path / "x.tsv")


def test_read_without_readers_module_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sbr_bench.data.readers", None)  # import fails as if absent
    with pytest.raises(UserError, match="sbr_bench.data.readers is missing"):
        get_source("gowalla").read(tmp_path / "x.txt")


def test_fetched_real_sample_reads_with_the_registered_reader(server, tmp_path):
    from conftest import shared_path

    pytest.importorskip("sbr_bench.data.readers")
    sample = shared_path("gowalla/raw_sample/loc-gowalla_totalCheckins.txt").read_bytes()
    server.files["/g.txt.gz"] = gzip.compress(sample)
    src = get_source("gowalla")
    raw = src.fetch(tmp_path, url=server.url("/g.txt.gz"), progress=False)
    assert raw.read_bytes() == sample
    clicks = src.read(raw)
    assert len(clicks) == 10_000  # the sample's documented check-in count
