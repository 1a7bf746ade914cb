"""The dataset registry and its cache: hits, keys, damaged files, atomic writes (fake source/protocol),
plus one real raw -> protocol -> cache run on the shared Diginetica sample."""

import pickle
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from sbr_bench.data import dataset as registry
from sbr_bench.data.dataset import load_dataset, prepare_dataset
from sbr_bench.data.sessions import Sessions
from sbr_bench.errors import UserError


class FakeProtocols:
    """A protocol that makes sessions from the raw file's lines and counts its calls."""

    def __init__(self):
        self.calls = 0
        self.fail = False

    def default_params(self, protocol, dataset):
        return {"min_length": 2}

    @property
    def PROTOCOLS(self):
        return {"lessr": self.run, "srgnn": self.run}

    def run(self, clicks, dataset, min_length):
        self.calls += 1
        if self.fail:
            raise RuntimeError("protocol failed half-way")
        seqs = [s for s in clicks if len(s) >= min_length]
        cut = int(len(seqs) * 0.8)
        n_items = max(max(s) for s in seqs)
        return types.SimpleNamespace(train=Sessions.from_lists(seqs[:cut]), test=Sessions.from_lists(seqs[cut:]),
                                     n_items=n_items, info={"dataset": dataset})


class FakeSource:
    default_protocol = "lessr"
    title = "fake"

    def __init__(self):
        self.fetched = 0

    def raw_path(self, data_dir):
        return Path(data_dir) / "gowalla" / "raw" / "clicks.txt"

    def fetch(self, data_dir):
        self.fetched += 1
        raise UserError(f"put clicks.txt in {Path(data_dir) / 'gowalla' / 'raw'}/ by hand")

    def read(self, path):
        return [[int(x) for x in line.split(",")] for line in Path(path).read_text().split()]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    protocols, source = FakeProtocols(), FakeSource()
    monkeypatch.setattr(registry, "_protocols", lambda: protocols)
    monkeypatch.setattr(registry, "_sources", lambda: types.SimpleNamespace(
        get_source=lambda name: source, SOURCES={"gowalla": source}))
    raw = source.raw_path(tmp_path)
    raw.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    raw.write_text("\n".join(",".join(map(str, rng.integers(1, 30, rng.integers(1, 6)))) for _ in range(50)))
    return types.SimpleNamespace(protocols=protocols, source=source, raw=raw, data_dir=tmp_path)


def test_second_load_hits_the_cache(fake):
    first = prepare_dataset("gowalla", fake.data_dir)
    second = prepare_dataset("gowalla", fake.data_dir)
    assert not first.from_cache and second.from_cache
    assert fake.protocols.calls == 1
    assert second.cache_path == first.cache_path
    assert second.dataset.stats() == first.dataset.stats()
    meta = second.dataset.meta
    assert meta["source"] == "gowalla" and meta["protocol"] == "lessr" and meta["params"] == {"min_length": 2}
    assert meta["cache_key"] == first.cache_path.stem
    assert len(meta["raw_sha256"]) == 64


def test_refresh_rebuilds(fake):
    prepare_dataset("gowalla", fake.data_dir)
    again = prepare_dataset("gowalla", fake.data_dir, refresh=True)
    assert not again.from_cache and fake.protocols.calls == 2


def test_changed_parameter_or_raw_file_gives_a_new_key(fake):
    base = prepare_dataset("gowalla", fake.data_dir).cache_path
    by_param = prepare_dataset("gowalla", fake.data_dir, min_length=3).cache_path
    by_valid = prepare_dataset("gowalla", fake.data_dir, valid_fraction=0.2).cache_path
    by_protocol = prepare_dataset("gowalla", fake.data_dir, protocol="srgnn").cache_path
    fake.raw.write_text(fake.raw.read_text() + "\n1,2,3")
    by_raw = prepare_dataset("gowalla", fake.data_dir).cache_path
    assert len({base, by_param, by_valid, by_protocol, by_raw}) == 5
    assert fake.protocols.calls == 5


def test_raw_file_digest_is_remembered(fake, monkeypatch):
    from sbr_bench.data import download

    hashed = []
    real = download.sha256_file
    monkeypatch.setattr(download, "sha256_file", lambda p: hashed.append(p) or real(p))
    registry.file_sha256(fake.raw, fake.data_dir)
    registry.file_sha256(fake.raw, fake.data_dir)
    assert len(hashed) == 1
    fake.raw.write_text("1,2,3,4")  # new size (and mtime): hashed again
    registry.file_sha256(fake.raw, fake.data_dir)
    assert len(hashed) == 2


def test_truncated_cache_file_is_rebuilt_with_a_warning(fake):
    path = prepare_dataset("gowalla", fake.data_dir).cache_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.warns(UserWarning, match="unreadable"):
        again = prepare_dataset("gowalla", fake.data_dir)
    assert not again.from_cache and fake.protocols.calls == 2
    assert prepare_dataset("gowalla", fake.data_dir).from_cache  # the rebuilt file is whole


def test_no_partial_files_after_a_failure(fake, monkeypatch):
    fake.protocols.fail = True
    with pytest.raises(RuntimeError):
        load_dataset("gowalla", fake.data_dir)
    fake.protocols.fail = False
    processed = fake.data_dir / "gowalla" / "processed"
    assert not processed.exists() or not list(processed.iterdir())

    def savez_dies(f, **arrays):  # writes some bytes, then the process "crashes"
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_dies)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("gowalla", fake.data_dir)
    assert list(processed.iterdir()) == []


def test_missing_raw_file(fake):
    fake.raw.unlink()
    with pytest.raises(UserError, match="by hand"):
        load_dataset("gowalla", fake.data_dir)
    assert fake.source.fetched == 1
    with pytest.raises(UserError, match="raw file .*nope.txt does not exist"):
        load_dataset("gowalla", fake.data_dir, raw=fake.data_dir / "nope.txt")


def test_unknown_names_and_options(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'nosuch'.*diginetica, gowalla"):
        load_dataset("nosuch", tmp_path)
    with pytest.raises(UserError, match="synthetic size 'huge' unknown"):
        load_dataset("synthetic:huge", tmp_path)
    with pytest.raises(UserError, match="only the parameter 'seed'"):
        load_dataset("synthetic:tiny", tmp_path, foo=1)


def test_synthetic_is_not_cached(tmp_path):
    ds = load_dataset("synthetic:tiny", tmp_path, seed=1)
    assert ds.meta["seed"] == 1 and not list(tmp_path.iterdir())


def write_srgnn(folder):
    folder.mkdir(parents=True)
    (folder / "all_train_seq.txt").write_bytes(pickle.dumps([[1, 2, 3], [2, 3], [3, 4, 1]] * 4))
    (folder / "test.txt").write_bytes(pickle.dumps(([[1, 2], [1], [4]], [3, 2, 2])))
    return folder


def test_import_then_load_by_name(tmp_path, monkeypatch):
    folder = write_srgnn(tmp_path / "src")
    data_dir = tmp_path / "data"
    first = prepare_dataset("mine", data_dir, source_path=folder)
    assert (data_dir / "mine" / "import.json").exists()
    from sbr_bench.data import loaders

    monkeypatch.setattr(loaders, "load_preprocessed", lambda *a, **k: pytest.fail("cache not used"))
    second = prepare_dataset("mine", data_dir)
    assert second.from_cache and second.dataset.stats() == first.dataset.stats()
    assert second.dataset.meta["layout"] == "srgnn"
    with pytest.raises(UserError, match="takes no protocol or parameters"):
        prepare_dataset("mine", data_dir, seed=3)
    with pytest.raises(UserError, match="takes no protocol"):
        prepare_dataset("mine", data_dir, protocol="lessr")
    with pytest.raises(UserError, match="raw files apply to sources only"):
        prepare_dataset("mine", data_dir, raw=folder / "test.txt")
    # The processed copy stands alone once the source folder is gone.
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    assert prepare_dataset("mine", data_dir).dataset.stats() == first.dataset.stats()


def test_import_rejects_protocol_options_for_preprocessed_data(tmp_path):
    folder = write_srgnn(tmp_path / "src")
    with pytest.raises(UserError, match="already preprocessed"):
        prepare_dataset("mine", tmp_path / "data", source_path=folder, protocol="lessr")
    for bad in ("../evil", "synthetic:tiny"):
        with pytest.raises(UserError, match="must be letters"):
            prepare_dataset(bad, tmp_path / "data", source_path=folder)


def test_a_path_is_cached_under_a_derived_name(tmp_path):
    folder = write_srgnn(tmp_path / "shop" / "srgnn")
    data_dir = tmp_path / "data"
    prepared = prepare_dataset(str(folder), data_dir)
    assert prepared.cache_path.parent == data_dir / "shop-srgnn" / "processed"
    assert prepare_dataset(str(folder), data_dir).from_cache


def test_real_raw_sample_through_the_srgnn_protocol_matches_the_golden_output(tmp_path):
    pytest.importorskip("sbr_bench.data.protocols")
    pytest.importorskip("sbr_bench.data.readers")
    raw = shared_path("diginetica/raw_sample/sample_train-item-views.csv")
    golden = shared_path("diginetica/srgnn_protocol_on_raw_sample")
    ours = load_dataset("diginetica", tmp_path, protocol="srgnn", raw=raw, valid_fraction=0.0)
    published = load_dataset(str(golden), tmp_path, valid_fraction=0.0)
    assert ours.n_items == published.n_items == 309
    assert ours.train.sessions.to_lists() == published.train.sessions.to_lists()
    assert sorted(zip(*ours.test.pairs())) == sorted(zip(*published.test.pairs()))
