"""sbr_bench.profiling: the scoring bound's work accounting, per-model peak memory, one-epoch profile rows,
and the epoch-time benchmark's data handling. No timing assertions (timings live in benchmarks/)."""

import math
import mmap
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from sbr_bench import profiling
from sbr_bench.data.graphs import ExampleLoader
from sbr_bench.data.sessions import Split
from sbr_bench.models.registry import model_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "epoch_time.py"


@pytest.mark.parametrize("n, batch", [(1000, 100), (1001, 100), (1050, 100), (7, 100), (1, 1), (101, 100)])
def test_epoch_batch_sizes_follow_the_training_loader(tiny, n, batch):
    split = Split(tiny.train.sessions, np.resize(tiny.train.ex_seq, n), np.resize(tiny.train.ex_len, n))
    loader = ExampleLoader(split, batch, tiny.n_items, shuffle=True)
    expected = {}
    for b in loader.batches(0):
        expected[b.num_graphs] = expected.get(b.num_graphs, 0) + 1
    assert profiling.epoch_batch_sizes(n, batch) == expected


def test_scoring_bound_accounts_for_every_batch_and_item():
    small = profiling.scoring_bound(250, 100, 8, 300, repeats=2)
    large = profiling.scoring_bound(250, 100, 8, 3000, repeats=2)
    for bound in (small, large):
        assert math.isfinite(bound.seconds) and bound.seconds > 0
        assert bound.batch_sizes == {100: 2, 50: 1}
        assert set(bound.per_batch_s) == {100, 50} and all(t > 0 for t in bound.per_batch_s.values())
        assert bound.seconds == pytest.approx(2 * bound.per_batch_s[100] + bound.per_batch_s[50])
    assert small.flops == 3 * 2 * 250 * 8 * 300  # 3 products, 2 flops per multiply-add, all examples
    assert large.flops == 10 * small.flops
    with pytest.raises(ValueError):
        profiling.scoring_bound(10, 5, 4, 20, repeats=0)


def test_peak_rss_is_reset_per_model():
    if not profiling.reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    base = profiling.current_rss_mb()
    assert profiling.peak_rss_mb() < base + 50
    # An anonymous mapping, not numpy: after keep_freed_memory() (called by any earlier training in this
    # process) malloc keeps freed blocks, and the RSS would not drop back.
    block = mmap.mmap(-1, 200 * 2**20)
    page = b"x" * 2**20
    for _ in range(200):  # touch all 200 MiB (in small writes: a 200 MiB bytes object would stay too)
        block.write(page)
    assert profiling.peak_rss_mb() >= base + 150
    block.close()
    assert profiling.reset_peak_rss() and profiling.peak_rss_mb() < base + 50


def test_subset_split_is_fixed_and_keeps_examples(tiny):
    a, b = profiling.subset_split(tiny.train, 50), profiling.subset_split(tiny.train, 50)
    assert len(a) == 50 and np.array_equal(a.ex_seq, b.ex_seq) and np.array_equal(a.ex_len, b.ex_len)
    pairs = set(zip(tiny.train.ex_seq.tolist(), tiny.train.ex_len.tolist()))
    assert set(zip(a.ex_seq.tolist(), a.ex_len.tolist())) <= pairs
    assert profiling.subset_split(tiny.train, None) is tiny.train
    assert profiling.subset_split(tiny.train, 10**9) is tiny.train


def test_profile_model_row_uses_the_models_scoring_shape(tiny):
    cfg = model_config("srgnn", {"dim": 12, "batch_size": 64})
    row = profiling.profile_model("srgnn", cfg, tiny, "cpu")
    assert row["status"] == "trained" and row["examples"] == len(tiny.train)
    assert (row["batch_size"], row["dim"], row["n_items"]) == (64, 12, tiny.n_items)
    assert row["train_s"] == pytest.approx(row["data_s"] + row["forward_s"] + row["backward_s"])
    assert row["ratio"] == pytest.approx(row["train_s"] / row["bound_s"]) and row["bound_s"] > 0
    assert row["peak_mb"] > 0
    cells = profiling.table_row(row)
    assert len(cells) == len(profiling.TABLE_HEADER) and cells[-1].endswith("x")


def test_benchmark_names_the_prepare_command_for_a_missing_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--dataset", "diginetica", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH), run_name="__main__")
    assert "sbr-bench datasets prepare diginetica --from ../shared/datasets/diginetica/srgnn_protocol" in str(e.value.code)


@pytest.mark.slow
def test_benchmark_runs_models_in_subprocesses(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--dataset", "synthetic:micro", "--models", "srgnn,attenmixer",
                                      "--subset", "300", "--json", str(out)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH), run_name="__main__")
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "train/bound" in text and "attenmixer / srgnn epoch train time" in text
    from sbr_bench.io import read_json

    rows = read_json(out)["rows"]
    assert [r["model"] for r in rows] == ["srgnn", "attenmixer"] and all(r["examples"] == 300 for r in rows)
