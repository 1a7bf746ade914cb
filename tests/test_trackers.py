"""--log tensorboard|mlflow: a tiny run's epochs read back from the trackers equal its epochs.jsonl."""

import importlib.util

import pytest

from sbr_bench import cli
from sbr_bench.io import read_json, read_jsonl

RUN = ["run", "--dataset", "synthetic:tiny", "--models", "srgnn", "--set", "dim=8", "--epochs", "2",
       "--no-progress", "--run-id", "tracked"]


def test_tensorboard_and_mlflow_record_every_epoch(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(RUN + ["--log", "tensorboard", "--log", "mlflow"]) == 0
    unit = tmp_path / "runs/tracked/srgnn/seed0"
    epochs, refit = read_jsonl(unit / "epochs.jsonl"), read_jsonl(unit / "refit/epochs.jsonl")
    summary = read_json(unit / "summary.json")

    events = EventAccumulator(str(unit / "tensorboard"))
    events.Reload()
    scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731
    assert scalars("valid/MRR@20") == [(r["epoch"], pytest.approx(r["valid"]["MRR@20"])) for r in epochs]
    assert scalars("refit/train/loss") == [(r["epoch"], pytest.approx(r["loss"])) for r in refit]
    assert scalars("final_test/HR@20") == [(summary["best_epoch"], pytest.approx(summary["test"]["HR@20"]))]

    record = read_json(unit / "mlflow.json")
    client = mlflow.tracking.MlflowClient(record["tracking_uri"])
    history = client.get_metric_history(record["run_id"], "valid/MRR_at_20")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["valid"]["MRR@20"])) for r in epochs]
    run = client.get_run(record["run_id"])
    assert run.data.params["dim"] == "8" and run.info.status == "FINISHED"
    assert run.data.metrics["final_test/MRR_at_20"] == pytest.approx(summary["test"]["MRR@20"])
    assert read_json(tmp_path / "runs/tracked/config.json")["log"] == ["tensorboard", "mlflow"]


def test_a_missing_tracker_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert cli.main(RUN + ["--log", "mlflow"]) == 2
    assert "--log mlflow: mlflow is not installed; install the extra with `pip install -e '.[mlflow]'`" in \
        capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
