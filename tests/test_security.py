"""Safe run records: checkpoints never execute code, run ids and dataset names stay in their folders, one
process per run folder, resumed units must be the units that were checkpointed, bad options fail up front."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.utils import scatter

from sbr_bench import cli
from sbr_bench.errors import UserError
from sbr_bench.io import read_json
from sbr_bench.models import registry
from sbr_bench.models.base import DotScorer, EmbeddingEncoder, Readout
from sbr_bench.runs import RecordError, Run, RunDir


class MeanReadout(Readout):
    def forward(self, enc, batch):
        return scatter(enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="mean")


@pytest.fixture(autouse=True)
def test_models(monkeypatch):
    spec = registry.ModelSpec(encoder=lambda n_items, cfg: EmbeddingEncoder(cfg["dim"]),
                              readout=lambda cfg: MeanReadout(),
                              scorer=lambda cfg: DotScorer(), defaults=dict(dim=8, batch_size=100, lr=0.01))
    monkeypatch.setattr(registry, "_SPECS", dict(registry.specs(), meanpool=spec))


def run(tmp_path, *args):
    return cli.main(["run", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
                     "--no-progress", *args])


FRESH = ["--dataset", "synthetic:tiny", "--models", "meanpool", "--epochs", "1", "--selection", "valid"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


class WritesMarker:
    """Unpickling this calls open(marker, 'w'): what a crafted checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- 1. checkpoints are loaded with weights_only ---------------------------------------------------

def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    unit = Run(tmp_path / "unit", "meanpool", 0)
    unit.save_checkpoint({"model": {}, "optimizer": WritesMarker(marker)})
    with pytest.raises(RecordError, match="checkpoint.pt") as e:
        unit.load_checkpoint()
    assert "io.open" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not marker.exists()


def test_resume_with_a_crafted_checkpoint_exits_two_and_runs_nothing(tmp_path, capsys):
    assert run(tmp_path, *FRESH, "--run-id", "r") == 0
    unit = tmp_path / "runs" / "r" / "meanpool" / "seed0"
    (unit / "summary.json").unlink()  # as if killed mid-training
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "optimizer": WritesMarker(marker)}, unit / "checkpoint.pt")
    capsys.readouterr()
    assert run(tmp_path, "--resume", "r") == 2
    err = one_line_error(capsys)
    assert str(unit / "checkpoint.pt") in err
    assert not marker.exists() and not (unit / "summary.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, damage):
    unit = Run(tmp_path / "unit", "meanpool", 0)
    unit.save_checkpoint({"model": {"w": torch.zeros(100)}, "rng": {"numpy": np.random.get_state()}})
    data = unit.checkpoint_path.read_bytes()
    unit.checkpoint_path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                                      "random": np.random.default_rng(0).bytes(2000)}[damage])
    with pytest.raises(RecordError, match="checkpoint.pt") as e:
        unit.load_checkpoint()
    assert len(str(e.value).splitlines()) == 1


def test_real_checkpoints_load_with_numpy_state(tmp_path):
    unit = Run(tmp_path / "unit", "meanpool", 0)
    state = {"rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state()},
             "state": {"best_test_result": {"ranks": np.arange(5.0), "nonfinite": 0, "tie_rate": np.float64(0.5)}}}
    unit.save_checkpoint(state)
    loaded = unit.load_checkpoint()
    assert loaded["rng"]["numpy"][0] == "MT19937"
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert np.array_equal(loaded["state"]["best_test_result"]["ranks"], np.arange(5.0))


# --- 2. run ids and dataset names stay inside their folders ------------------------------------------

@pytest.mark.parametrize("run_id", ["../../../x", "/abs/x", ".", "..", ".hidden", "a/b", ""])
def test_unsafe_run_ids_are_refused_before_anything_is_written(tmp_path, capsys, run_id):
    assert run(tmp_path, *FRESH, "--run-id", run_id) == 2
    assert "--run-id" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists() and not (tmp_path / "data").exists()


def test_run_dir_create_refuses_unsafe_ids(tmp_path):
    with pytest.raises(UserError, match="one folder name"):
        RunDir.create(tmp_path / "runs", "../escape", {}, {})
    assert not (tmp_path / "escape").exists()


def test_resume_by_id_cannot_leave_the_runs_dir(tmp_path, capsys, monkeypatch):
    outside = tmp_path / "outside"  # a run folder next to runs/, reachable as the "id" ../outside
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    cwd = tmp_path / "a" / "b"  # where ../outside is no folder
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert cli.main(["run", "--runs-dir", str(tmp_path / "runs"), "--resume", "../outside"]) == 2
    assert "not a run id" in one_line_error(capsys)


def test_resume_accepts_an_existing_run_folder_path(tmp_path):
    folder = tmp_path / "elsewhere" / "myrun"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert RunDir.open(str(folder), tmp_path / "runs").path == folder


def test_dataset_names_do_not_resolve_outside_the_data_dir(tmp_path, monkeypatch):
    from sbr_bench.data.dataset import load_dataset, prepare_dataset

    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # where ../evil is no path (an existing path is a path dataset)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    evil = tmp_path / "evil"  # an "import" outside the data dir, reachable as data/../evil
    evil.mkdir()
    (evil / "import.json").write_text('{"path": "/nonexistent", "layout": "srgnn"}')
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("../evil", data_dir=data_dir)
    with pytest.raises(UserError, match="dataset name"):
        prepare_dataset("../evil", data_dir=data_dir, source_path=tmp_path)
    assert not (evil / "processed").exists()


# --- 3. one process per run folder -------------------------------------------------------------------

HOLDER = """
import sys
from sbr_bench.lock import FolderLock
FolderLock(sys.argv[1]).acquire("test")
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


@pytest.fixture
def locked_by_child():
    """lock(folder) locks `folder` from a child process and returns the child (released after the test)."""
    children = []

    def lock(folder):
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
        child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield lock
    for child in children:
        child.stdin.close()
        child.wait(30)
        child.stdout.close()


def test_resume_of_a_locked_run_is_refused_naming_the_holder(tmp_path, capsys, locked_by_child):
    assert run(tmp_path, *FRESH, "--run-id", "r") == 0
    folder = tmp_path / "runs" / "r"
    child = locked_by_child(folder)
    capsys.readouterr()
    before = sorted(p.name for p in folder.iterdir())
    assert run(tmp_path, "--resume", "r") == 2
    err = one_line_error(capsys)
    assert f"pid {child.pid} on host {socket.gethostname()}" in err and "in use" in err
    assert sorted(p.name for p in folder.iterdir()) == before  # not even an env.resume-*.json


def test_fresh_run_on_a_locked_folder_is_refused(tmp_path, capsys, locked_by_child):
    child = locked_by_child(tmp_path / "runs" / "same")
    assert run(tmp_path, *FRESH, "--run-id", "same") == 2
    assert f"pid {child.pid}" in one_line_error(capsys)
    assert not (tmp_path / "runs" / "same" / "config.json").exists()


def test_lock_is_released_when_the_holder_is_killed(tmp_path, locked_by_child):
    from sbr_bench.lock import FolderLock

    folder = tmp_path / "f"
    child = locked_by_child(folder)
    with pytest.raises(UserError, match="in use"):
        FolderLock(folder).acquire("x")
    child.kill()  # SIGKILL: the kernel drops the flock with the process, no stale lock
    child.wait(30)
    lock = FolderLock(folder).acquire("x")
    assert lock.held and f"pid {os.getpid()}" in (folder / ".lock").read_text()
    lock.release()


def test_a_run_releases_its_lock_when_it_ends(tmp_path):
    from sbr_bench.lock import FolderLock

    assert run(tmp_path, *FRESH, "--run-id", "r") == 0
    FolderLock(tmp_path / "runs" / "r").acquire("x").release()  # free again (in this very process)


# --- 4. leftovers and changed units ------------------------------------------------------------------

def test_fresh_run_does_not_adopt_leftover_units(tmp_path, capsys):
    leftover = tmp_path / "runs" / "r" / "meanpool" / "seed0"
    leftover.mkdir(parents=True)
    (leftover / "checkpoint.pt").write_bytes(b"old")
    assert run(tmp_path, *FRESH, "--run-id", "r") == 2
    assert "no config.json" in one_line_error(capsys)
    assert not (tmp_path / "runs" / "r" / "config.json").exists()


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, capsys):
    from sbr_bench.units import load_dataset
    from sbr_bench.io import write_json
    from sbr_bench.training import _Trainer

    assert run(tmp_path, *FRESH, "--run-id", "r") == 0
    root = tmp_path / "runs" / "r"
    config = read_json(root / "config.json")
    unit = RunDir(root).unit("meanpool", 0)
    unit.summary_path.unlink()  # unfinished, with a full checkpoint taken under the recorded config
    dataset, cfg = load_dataset(config["dataset"]), config["cfg"]["meanpool"]
    model, _ = registry.build_model("meanpool", dataset.n_items, cfg)
    _Trainer(model, dataset.train, cfg, dataset=dataset, run=unit, watch="valid", device=torch.device("cpu"),
             seed=0, progress=False, checkpoint_every=0).save()
    write_json(root / "config.json", dict(config, cfg={"meanpool": dict(cfg, lr=0.5)}))  # the unit changed
    capsys.readouterr()
    assert run(tmp_path, "--resume", "r") == 2
    err = one_line_error(capsys)
    assert str(unit.path) in err and "cfg" in err
    write_json(root / "config.json", config)  # the unit as checkpointed: resumes
    assert run(tmp_path, "--resume", "r") == 0 and unit.is_finished()


def test_restore_refuses_a_changed_cfg(tiny, tmp_path):
    from sbr_bench.training import _Trainer

    def trainer(cfg):
        model, cfg = registry.build_model("meanpool", tiny.n_items, cfg)
        return _Trainer(model, tiny.train, cfg, dataset=tiny, run=Run(tmp_path / "u", "meanpool", 0), watch="valid",
                        device=torch.device("cpu"), seed=0, progress=False, checkpoint_every=0)

    trainer({"lr": 0.01}).save()
    assert trainer({"lr": 0.01}).restore()  # the same unit resumes
    with pytest.raises(RecordError, match="cfg") as e:
        trainer({"lr": 0.02}).restore()
    assert str(tmp_path / "u") in str(e.value)


# --- 5. bad options fail up front --------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--models", ""], "--models"),
    (["--models", " , "], "--models"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--set", "epochs=1.7"], "epochs"),
    (["--set", "lr=NaN"], "lr"),
    (["--set", "epochs=Infinity"], "epochs"),
    (["--set", "lr=-Infinity"], "lr"),
    (["--seed-list", "-1"], "--seed-list"),
    (["--seed-list", "0,-3"], "--seed-list"),
])
def test_bad_options_exit_two_before_any_folder(tmp_path, capsys, args, message):
    models = [] if "--models" in args else ["--models", "meanpool"]
    assert run(tmp_path, "--dataset", "synthetic:tiny", *models, *args, "--run-id", "r") == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


def test_whole_float_epochs_are_taken_as_integers():
    assert registry.model_config("meanpool", {"epochs": 2.0})["epochs"] == 2
    assert isinstance(registry.model_config("meanpool", {"epochs": 2.0})["epochs"], int)


# --- 5. damaged records, orphans, full disks, resume options, sweeps, memory, pickle bombs ----------

@pytest.mark.parametrize("record", ["meanpool/seed0/summary.json", "config.json"])
def test_truncated_records_on_resume_are_one_line_naming_the_file(tmp_path, capsys, record):
    assert run(tmp_path, *FRESH, "--run-id", "r") == 0
    path = tmp_path / "runs" / "r" / record
    path.write_text(path.read_text()[:20])
    capsys.readouterr()
    assert run(tmp_path, "--resume", "r") == 2
    assert str(path) in one_line_error(capsys)


def test_truncated_ranks_on_resume_is_one_line_naming_the_file(tmp_path, capsys):
    assert run(tmp_path, *FRESH, "--run-id", "r") == 0
    path = tmp_path / "runs" / "r" / "meanpool" / "seed0" / "ranks.npz"
    path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    assert run(tmp_path, "--resume", "r") == 2
    assert f"{path}: not a readable ranks file" in one_line_error(capsys)


def test_a_random_checkpoint_is_discarded_on_request(tmp_path, capsys):
    assert run(tmp_path, *FRESH, "--run-id", "r", "--seeds", "2") == 0
    unit = tmp_path / "runs" / "r" / "meanpool" / "seed1"
    expected = read_json(unit / "summary.json")["test"]
    (unit / "summary.json").unlink()
    (unit / "checkpoint.pt").write_bytes(os.urandom(3000))
    capsys.readouterr()
    assert run(tmp_path, "--resume", "r") == 2
    assert "--discard-checkpoint" in one_line_error(capsys)
    assert run(tmp_path, "--resume", "r", "--discard-checkpoint") == 0
    assert read_json(unit / "summary.json")["test"] == expected  # trained again from scratch, same seed
    assert len(list(unit.glob("checkpoint.pt.discarded-*"))) == 1
    assert run(tmp_path, *FRESH, "--run-id", "s", "--discard-checkpoint") == 2


def test_orphan_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    assert run(tmp_path, *FRESH, "--run-id", "r", "--seeds", "2") == 0
    unit = tmp_path / "runs" / "r" / "meanpool" / "seed1"
    (unit / "summary.json").unlink()
    from sbr_bench.io import writer_tag

    orphan, live = unit / f".ranks.npz.{writer_tag(int(dead))}.abc123.tmp", \
        unit / f".ranks.npz.{writer_tag(os.getppid())}.def456.tmp"
    other_host = unit / f".ranks.npz.0000beef-{dead}.ghi789.tmp"  # another node's writer: not ours to judge
    other_host.write_bytes(b"w")
    orphan.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    assert run(tmp_path, "--resume", "r") == 0
    assert not orphan.exists() and live.exists() and other_host.exists()

    # the dataset cache too
    import pickle

    from sbr_bench.data.dataset import load_dataset

    split = tmp_path / "split"
    split.mkdir()
    (split / "all_train_seq.txt").write_bytes(pickle.dumps([[1, 2, 3], [2, 3, 4], [3, 4, 5]] * 5))
    (split / "test.txt").write_bytes(pickle.dumps(([[1, 2], [2, 3]], [3, 4])))
    load_dataset(str(split), data_dir=tmp_path / "data")
    cache = next((tmp_path / "data").rglob("*.npz"))
    cached_orphan = cache.parent / f".{cache.name}.{writer_tag(int(dead))}.zz.tmp"
    cached_orphan.write_bytes(b"z")
    load_dataset(str(split), data_dir=tmp_path / "data")
    assert not cached_orphan.exists()


def test_a_full_disk_while_recording_a_failure_goes_on_to_the_next_model(tmp_path, capsys, monkeypatch):
    import sbr_bench.io as io

    class Broken(EmbeddingEncoder):
        def forward(self, batch, embedding):
            raise RuntimeError("boom")

    spec = registry.ModelSpec(encoder=lambda n, cfg: Broken(cfg["dim"]), readout=lambda cfg: MeanReadout(),
                              scorer=lambda cfg: DotScorer(), defaults=dict(dim=8))
    monkeypatch.setattr(registry, "_SPECS", dict(registry.specs(), broken=spec))
    real = io.write_text

    def full(path, text):
        if Path(path).name in ("error.txt", "summary.json") and "broken" in str(path):
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(io, "write_text", full)
    assert run(tmp_path, "--dataset", "synthetic:tiny", "--models", "broken,meanpool", "--epochs", "1",
               "--run-id", "r") == 0
    err = capsys.readouterr().err
    assert "traceback not written: No space left on device" in err and "could not be recorded" in err
    assert read_json(tmp_path / "runs/r/meanpool/seed0/summary.json")["status"] == "ok"


@pytest.mark.parametrize("option", [["--valid-fraction", "0.3"], ["--protocol", "lessr"],
                                    ["--protocol-param", "strict=true"], ["--log", "tensorboard"]])
def test_resume_refuses_options_it_cannot_honour(tmp_path, capsys, option):
    assert run(tmp_path, *FRESH, "--run-id", "r") == 0
    capsys.readouterr()
    assert run(tmp_path, "--resume", "r", *option) == 2
    assert f"drop {option[0]}" in one_line_error(capsys)


def test_a_sweep_point_in_use_is_refused_naming_the_holder(tmp_path, capsys, locked_by_child):
    sweep = ["sweep", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), "--dataset",
             "synthetic:tiny", "--models", "meanpool", "--grid", "lr=0.01,0.02", "--epochs", "1", "--no-progress",
             "--sweep-id", "sw"]
    assert cli.main(sweep) == 0
    child = locked_by_child(tmp_path / "runs" / "sw-lr0.02")
    capsys.readouterr()
    assert cli.main(sweep) == 2
    assert f"pid {child.pid}" in one_line_error(capsys)
    assert RunDir(tmp_path / "runs" / "sw-lr0.01").lock("after").unlock() is None  # the first point was released


def test_a_model_too_large_for_memory_is_refused_with_its_estimate(tmp_path, capsys):
    assert run(tmp_path, "--dataset", "synthetic:tiny", "--models", "meanpool", "--set", "dim=100000000") == 2
    err = one_line_error(capsys)
    assert "--set dim=100000000: needs at least" in err and "GiB" in err and "this machine has" in err
    assert not (tmp_path / "runs").exists()


def test_a_pickle_that_expands_far_beyond_its_size_is_refused(tmp_path, monkeypatch):
    import pickle

    from sbr_bench.data.loaders import MAX_IDS_ENV, load_srgnn

    session = list(range(1, 1001))
    (tmp_path / "all_train_seq.txt").write_bytes(pickle.dumps([session] * 5000, protocol=4))  # 5M ids
    (tmp_path / "test.txt").write_bytes(pickle.dumps(([[1, 2]], [3]), protocol=4))
    size = (tmp_path / "all_train_seq.txt").stat().st_size
    assert size < 20_000
    with pytest.raises(UserError, match=f"stand for 5,000,000 ids.*set {MAX_IDS_ENV}="):
        load_srgnn(tmp_path)
    monkeypatch.setenv(MAX_IDS_ENV, "1000")
    assert len(load_srgnn(tmp_path).train) == 5000


def test_a_dissection_in_use_is_refused_naming_the_holder(tmp_path, capsys, locked_by_child):
    dissect = ["dissect", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), "--dataset",
               "synthetic:tiny", "--model", "srgnn", "--set", "dim=8", "--epochs", "1", "--no-progress"]
    assert cli.main(dissect + ["--run-id", "d"]) == 0
    child = locked_by_child(tmp_path / "runs" / "d")
    capsys.readouterr()
    assert cli.main(dissect[:3] + ["--resume", "d"]) == 2
    assert f"pid {child.pid}" in one_line_error(capsys)


def test_a_garbage_import_record_is_named_and_does_not_break_the_list(tmp_path, capsys):
    record = tmp_path / "data" / "mine" / "import.json"
    record.parent.mkdir(parents=True)
    record.write_text("garbage{")
    assert cli.main(["datasets", "list", "--data-dir", str(tmp_path / "data")]) == 0
    assert "imported (broken)" in capsys.readouterr().out
    assert run(tmp_path, "--dataset", "mine", "--models", "pop") == 2
    assert f"{record}: not a readable import record" in one_line_error(capsys)
