
from sbr_bench.data.sessions import SessionDataset, Sessions, Split, split_validation


def test_prefix_augmentation():
    split = Split.all_prefixes(Sessions.from_lists([[1, 2, 3], [4, 5]]))
    prefixes, targets = split.pairs()
    assert prefixes == [[1], [1, 2], [4]] and targets == [2, 3, 5]


def test_pairs_roundtrip():
    split = Split.from_pairs([[1, 2], [3]], [4, 5])
    assert split.pairs() == ([[1, 2], [3]], [4, 5])


def test_validation_is_latest_by_time():
    s = Sessions.from_lists([[1, 2]] * 10, end_time=[5, 1, 2, 3, 4, 9, 8, 7, 6, 0])
    fit, valid = split_validation(s, 0.2)
    assert sorted(valid.end_time.tolist()) == [8, 9]
    assert max(fit.end_time) < min(valid.end_time)


def test_save_load_roundtrip(tmp_path, tiny):
    path = tmp_path / "d.npz"
    tiny.save(path)
    back = SessionDataset.load(path)
    assert back.stats() == tiny.stats() and back.meta == tiny.meta
    for name in SessionDataset.SPLITS:
        assert back.__dict__[name].pairs() == tiny.__dict__[name].pairs()
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_synthetic_is_deterministic_and_uses_item_range(tiny):
    from sbr_bench.data.synthetic import synthetic_dataset

    again = synthetic_dataset("tiny", seed=0)
    assert again.test.pairs() == tiny.test.pairs()
    for split in (tiny.train, tiny.valid, tiny.test):
        assert split.sessions.items.min() >= 1 and split.sessions.items.max() <= tiny.n_items
    assert synthetic_dataset("tiny", seed=1).test.pairs() != tiny.test.pairs()
