"""`sbr-bench sweep` grids on the local and the Ray engine: same records, same numbers, and a Ray worker
killed mid-unit is retried and resumes from its checkpoint without losing or repeating an epoch."""

import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from sbr_bench.cli import main
from sbr_bench.io import read_json, read_jsonl

SMALL = ["--dataset", "synthetic:micro", "--epochs", "1", "--set", "dim=8", "--set", "batch_size=64", "--no-progress"]
GRID = ["--model", "attenmixer", "--grid", "levels=1,2", "--seeds", "2"] + SMALL
POINTS = ["sweep-attenmixer-levels-synthetic_micro-levels1", "sweep-attenmixer-levels-synthetic_micro-levels2"]


def unit_summaries(runs, points=POINTS, model="attenmixer", seeds=(0, 1)) -> dict:
    return {(p, s): read_json(runs / p / model / f"seed{s}" / "summary.json") for p in points for s in seeds}


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    runs = tmp_path_factory.mktemp("local") / "runs"
    assert main(["sweep", "--runs-dir", str(runs)] + GRID) == 0
    return runs


def test_local_engine_runs_every_unit_of_the_grid(local_grid, capsys):
    summaries = unit_summaries(local_grid)
    assert len(summaries) == 4 and all(s["status"] == "ok" for s in summaries.values())
    for value, point in zip((1, 2), POINTS):
        config = read_json(local_grid / point / "config.json")
        assert config["cfg"]["attenmixer"]["levels"] == value and config["seeds"] == [0, 1]
        # the one-parameter record the report's Figures 5/6 read, plus the general one
        assert config["sweep"]["param"] == "levels" and config["sweep"]["value"] == value
        assert config["sweep"]["params"] == {"levels": value}
        results = read_json(local_grid / point / "results.json")
        assert results["models"]["attenmixer"]["seeds_ok"] == [0, 1]
        attempts = read_jsonl(local_grid / point / "attenmixer" / "seed0" / "attempts.jsonl")
        assert [a["engine"] for a in attempts] == ["local"]
    # the same sweep again trains nothing; other settings for an existing point are refused
    assert main(["sweep", "--runs-dir", str(local_grid)] + GRID) == 0
    out = capsys.readouterr().out
    assert out.count("already finished") == 4 and "0 to train" in out
    assert main(["sweep", "--runs-dir", str(local_grid), "--set", "heads=2"] + GRID) == 2
    assert "started with other settings" in capsys.readouterr().err


def test_multi_parameter_grid_over_two_models(tmp_path):
    runs = tmp_path / "runs"
    assert main(["sweep", "--models", "attenmixer,attenmixer-M", "--grid", "levels=1", "--grid", "heads=1,2",
                 "--runs-dir", str(runs), "--sweep-id", "g"] + SMALL) == 0
    ids = sorted(p.name for p in runs.iterdir())
    assert ids == sorted(f"g-{m}-levels1-heads{h}" for m in ("attenmixer", "attenmixer-M") for h in (1, 2))
    config = read_json(runs / "g-attenmixer-M-levels1-heads2" / "config.json")
    assert config["sweep"] == {"id": "g", "model": "attenmixer-M", "dataset": "synthetic:micro",
                               "params": {"levels": 1, "heads": 2}}  # no param/value: Figures 5/6 skip it
    assert config["cfg"]["attenmixer-M"]["heads"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--model", "srgnn", "--grid", "levels=1,2"], "model 'srgnn' has no parameter 'levels'"),
    (["--models", "attenmixer,srgnn", "--grid", "heads=1"], "--grid heads=1: model 'srgnn' has no parameter"),
    (["--grid", "levels"], "--grid levels: expected KEY=VALUES"),
    (["--grid", "levels=3..1"], "--grid levels=3..1: empty range"),
    (["--grid", "levels=1", "--grid", "levels=2"], "'levels' is in the grid twice"),
    (["--param", "levels"], "--param and --values go together"),
    (["--grid", "epochs=1,2"], "also fixed by --set or --epochs"),
    (["--address", "auto"], "--address applies to --engine ray only"),
    (["--set", "nosuch=1"], "no model of the sweep has the parameter 'nosuch'"),
])
def test_bad_grid_input_is_a_usage_error(tmp_path, capsys, argv, message):
    assert main(["sweep", "--runs-dir", str(tmp_path / "runs")] + SMALL + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_engine_ray_without_ray_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["sweep", "--runs-dir", str(tmp_path / "runs"), "--engine", "ray"] + GRID) == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_ray_address_that_does_not_answer(monkeypatch):
    from sbr_bench.engines import Unit, run_ray
    from sbr_bench.errors import UserError

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("no cluster")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(UserError, match="address = 'ray://nowhere:10001': cannot connect"):
        run_ray([Unit("/x", "srgnn", 0, "x")], "/d", "cpu", "ray://nowhere:10001", 1, 0, 3)
    assert calls == [{"address": "ray://nowhere:10001"}]


# --- a real local Ray instance with 2 CPUs --------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_engine_gives_the_local_numbers(ray_instance, local_grid, tmp_path):
    runs = tmp_path / "runs"
    assert main(["sweep", "--runs-dir", str(runs), "--engine", "ray"] + GRID) == 0
    ray_units, local_units = unit_summaries(runs), unit_summaries(local_grid)
    for key, summary in ray_units.items():
        assert summary["status"] == "ok"
        # CPU training with the same seed and 1 thread is bit-for-bit reproducible
        assert summary["test"] == local_units[key]["test"], key
        assert summary["valid"] == local_units[key]["valid"], key
        attempts = read_jsonl(runs / key[0] / "attenmixer" / f"seed{key[1]}" / "attempts.jsonl")
        assert [(a["engine"], a["torch_threads"]) for a in attempts] == [("ray", 1)]
    for point in POINTS:
        assert read_json(runs / point / "results.json")["models"]["attenmixer"]["seeds_ok"] == [0, 1]


def test_ray_unit_that_fails_is_recorded_not_retried(ray_instance, tmp_path):
    # A task with no GPU resource sees no CUDA device (Ray hides them), so --device cuda fails in the task.
    runs = tmp_path / "runs"
    assert main(["sweep", "--runs-dir", str(runs), "--engine", "ray", "--device", "cuda", "--model", "attenmixer",
                 "--grid", "levels=1", "--seeds", "1"] + SMALL) == 1
    unit = runs / POINTS[0] / "attenmixer" / "seed0"
    summary = read_json(unit / "summary.json")
    assert summary["status"] == "failed" and "CUDA is not available" in summary["reason"]
    assert len(read_jsonl(unit / "attempts.jsonl")) == 1  # an exception in the task is not retried
    assert read_json(runs / POINTS[0] / "results.json")["models"]["attenmixer"]["status"] == "failed"


def _worker_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "ray::sweep_unit"], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def test_killed_ray_worker_is_retried_and_nothing_is_lost(ray_instance, tmp_path):
    runs = tmp_path / "runs"
    argv = ["sweep", "--model", "attenmixer", "--grid", "levels=2", "--seeds", "2", "--dataset", "synthetic:tiny",
            "--epochs", "3", "--set", "dim=16", "--set", "batch_size=64", "--checkpoint-every", "20",
            "--runs-dir", str(runs), "--sweep-id", "k", "--engine", "ray", "--no-progress"]
    units = [runs / "k-levels2" / "attenmixer" / f"seed{s}" for s in (0, 1)]
    killed, problems = [], []

    def kill_a_busy_worker():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for unit in units:  # a unit one epoch in, with two to go: its worker is surely still on it
                if len(read_jsonl(unit / "epochs.jsonl")) == 1 and not (unit / "summary.json").exists():
                    pid = read_jsonl(unit / "attempts.jsonl")[-1]["pid"]
                    if pid in _worker_pids():  # the process titled ray::sweep_unit that runs this unit
                        os.kill(pid, signal.SIGKILL)
                        killed.append((unit, pid))
                        return
            time.sleep(0.05)
        problems.append("no unit reached the end of its first epoch in time")

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    try:
        assert main(argv) == 0
    finally:
        killed.append(None)  # stops the killer if the sweep ended first
        killer.join(timeout=10)
    assert not problems and killed[0] is not None
    unit, pid = killed[0]
    attempts = read_jsonl(unit / "attempts.jsonl")
    assert len(attempts) == 2 and attempts[0]["pid"] == pid and attempts[1]["pid"] != pid
    assert attempts[1]["resumed"]  # the retry continued from the checkpoint
    for u in units:
        summary = read_json(u / "summary.json")
        assert summary["status"] == "ok" and summary["epochs_trained"] == 3
        assert [r["epoch"] for r in read_jsonl(u / "epochs.jsonl")] == [0, 1, 2]  # none lost or repeated
    assert read_json(runs / "k-levels2" / "results.json")["models"]["attenmixer"]["seeds_ok"] == [0, 1]
