"""Resume: a run interrupted mid-epoch (in-process crash, or kill -9 of the CLI) continues from its last
checkpoint and ends with exactly the numbers of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch_geometric.utils import scatter

from sbr_bench.io import read_json, read_jsonl
from sbr_bench.models.base import DotScorer, EmbeddingEncoder, Readout, SBRModel
from sbr_bench.runs import Run
from sbr_bench.training import seed_everything, train_model

CFG = dict(dim=16, batch_size=50, lr=0.01, l2=1e-5, lr_step=1, lr_decay=0.5, epochs=3, patience=3,
           optimizer="adam", dropout=0.0)


class MeanReadout(Readout):
    def forward(self, enc, batch):
        return scatter(enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="mean")


class Crash(Exception):
    pass


class CrashingModel(SBRModel):
    """Raises once its shared counter reaches `crash_at` training steps (simulates a killed process)."""

    def __init__(self, n_items, crash_at=None, readout=None):
        # dropout draws from the torch RNG, so an exact resume needs the RNG state restored too
        super().__init__(n_items, 16, EmbeddingEncoder(16, dropout=0.3), readout or MeanReadout(), DotScorer())
        self.crash_at, self.steps = crash_at, 0

    def loss(self, batch):
        self.steps += 1
        if self.crash_at is not None and self.steps == self.crash_at:
            raise Crash()
        return super().loss(batch)


def build(n_items, crash_at=None, readout=None):
    seed_everything(3)
    model = CrashingModel(n_items, crash_at, readout)
    model.reset_parameters()
    return model


def comparable(run: Run):
    summary = run.read_summary()
    rows = run.read_epochs()
    return ({k: summary[k] for k in ("best_epoch", "valid", "test", "epochs_trained")},
            [(r["epoch"], r["loss"], r["lr"], r["valid"]) for r in rows])


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("ref") / "unit", "crashy", 3)
    train_model(build(tiny.n_items), tiny, CFG, run, seed=3, progress=False, checkpoint_every=5)
    return comparable(run)


def test_crash_mid_epoch_resumes_exactly(tiny, tmp_path, reference):
    batches_per_epoch = -(-len(tiny.train) // CFG["batch_size"])
    run = Run(tmp_path / "unit", "crashy", 3)
    crash_step = batches_per_epoch + 13  # epoch 1, after the mid-epoch checkpoint at batch 10
    with pytest.raises(Crash):
        train_model(build(tiny.n_items, crash_at=crash_step), tiny, CFG, run, seed=3, progress=False,
                    checkpoint_every=5)
    assert not run.is_finished()
    state = run.load_checkpoint()["state"]
    assert (state["epoch"], state["batch"]) == (1, 10)
    train_model(build(tiny.n_items), tiny, CFG, run, seed=3, progress=False, checkpoint_every=5)
    assert comparable(run) == reference
    rows = run.read_epochs()
    assert [r["resumed_mid_epoch"] for r in rows] == [False, True, False]


def test_crash_between_epoch_log_and_checkpoint_does_not_duplicate_epochs(tiny, tmp_path, reference,
                                                                        monkeypatch):
    run = Run(tmp_path / "unit", "crashy", 3)
    real_save, calls = Run.save_checkpoint, []

    def save_then_crash(self, state):
        calls.append(state["state"]["epoch"])
        if len(calls) == 2:  # epoch 1 is already in epochs.jsonl, its checkpoint never lands
            raise Crash()
        real_save(self, state)

    monkeypatch.setattr(Run, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train_model(build(tiny.n_items), tiny, CFG, run, seed=3, progress=False, checkpoint_every=0)
    assert [r["epoch"] for r in run.read_epochs()] == [0, 1]
    monkeypatch.setattr(Run, "save_checkpoint", real_save)
    train_model(build(tiny.n_items), tiny, CFG, run, seed=3, progress=False, checkpoint_every=0)
    assert comparable(run) == reference


# --- the real thing: kill -9 the CLI mid-epoch, then `--resume` ---------------------------------------

LAUNCHER = '''
import sys
from torch_geometric.utils import scatter
from sbr_bench.models import registry
from sbr_bench.models.base import DotScorer, EmbeddingEncoder, Readout

class MeanReadout(Readout):
    def forward(self, enc, batch):
        return scatter(enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="mean")

registry.specs()["meanpool"] = registry.ModelSpec(
    encoder=lambda n_items, cfg: EmbeddingEncoder(cfg["dim"], cfg["dropout"]),
    readout=lambda cfg: MeanReadout(), scorer=lambda cfg: DotScorer(),
    defaults=dict(dim=16, batch_size=25, epochs=2, lr=0.01, dropout=0.2))

from sbr_bench.cli import main
sys.exit(main(sys.argv[1:]))
'''


def cli(tmp_path, *args, wait=True):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    fresh = [] if "--resume" in args else ["--dataset", "synthetic:tiny"]
    cmd = [sys.executable, str(launcher), "run", *fresh, "--runs-dir", str(tmp_path / "runs"),
           "--data-dir", str(tmp_path / "data"), "--no-progress", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def mid_epoch(path):
    """The epoch of a checkpoint taken within an epoch (batch > 0), else None."""
    from sbr_bench.runs import RecordError

    try:  # the suite's own safe loader: a checkpoint being written may be partial
        state = Run(Path(path).parent).load_checkpoint()["state"]
    except (TypeError, KeyError, RecordError):
        return None
    return state["epoch"] if state["batch"] > 0 else None


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    common = ["--models", "meanpool", "--checkpoint-every", "5"]
    done = cli(tmp_path, *common, "--run-id", "straight")
    assert done.returncode == 0, done.stdout + done.stderr

    proc = cli(tmp_path, *common, "--run-id", "killed", wait=False)
    unit = tmp_path / "runs" / "killed" / "meanpool" / "seed0"
    deadline = time.time() + 240
    try:
        # kill as soon as a mid-epoch checkpoint of epoch 1 exists (checkpoints are replaced atomically,
        # so reading one while the run goes on is safe)
        while time.time() < deadline and proc.poll() is None:
            if len(read_jsonl(unit / "epochs.jsonl")) == 1 and mid_epoch(unit / "checkpoint.pt") == 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (unit / "summary.json").exists()
    assert mid_epoch(unit / "checkpoint.pt") == 1  # it really died within epoch 1

    resumed = cli(tmp_path, "--resume", "killed")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    a = read_json(tmp_path / "runs" / "straight" / "meanpool" / "seed0" / "summary.json")
    b = read_json(unit / "summary.json")
    for key in ("test", "valid", "best_epoch", "epochs_trained"):
        assert a[key] == b[key], key
    losses = lambda p: [r["loss"] for r in read_jsonl(p / "epochs.jsonl")]  # noqa: E731
    assert losses(unit) == losses(tmp_path / "runs" / "straight" / "meanpool" / "seed0")

    again = cli(tmp_path, "--resume", "killed")  # a finished unit is skipped, not retrained
    assert again.returncode == 0 and "already finished" in again.stdout
