"""Selection modes: refit trains on train + validation for the selected epochs and tests once; literature
is test-selected and labelled wherever it is shown; refit is the literature trajectory at the chosen epoch."""

import numpy as np
import pytest

from sbr_bench import cli
from sbr_bench import evaluate as ev
from sbr_bench.io import read_json
from sbr_bench.models.baselines import Popularity as Pop
from sbr_bench.runs import Run, RunDir, collect_results, results_markdown, results_text
from sbr_bench.training import train_model

from test_train import CFG, CountingEvaluate, mean_model


def _train(tiny, tmp_path, selection, name="u", **cfg):
    run = Run(tmp_path / name, "mean", 0)
    summary = train_model(mean_model(tiny.n_items), tiny, dict(CFG, **cfg), run, progress=False,
                          selection=selection, rebuild=lambda: mean_model(tiny.n_items))
    return summary, run


def test_refit_trains_on_train_and_valid_for_the_selected_epochs_and_tests_once(tiny, tmp_path, monkeypatch):
    counter = CountingEvaluate(tiny)
    monkeypatch.setattr(ev, "evaluate", counter)
    summary, run = _train(tiny, tmp_path, "refit", epochs=4, patience=0)
    # selection: validation after every epoch; the refit evaluates nothing; the test once; then the audit
    assert counter.calls == ["valid"] * 4 + ["test"] + ["valid"] * 2
    selection_rows, refit_rows = run.read_epochs(), Run(run.path / "refit").read_epochs()
    assert [r["examples"] for r in selection_rows] == [len(tiny.train)] * 4
    assert len(refit_rows) == summary["best_epoch"] + 1 == summary["refit_epochs"]
    assert all(r["examples"] == len(tiny.train) + len(tiny.valid) for r in refit_rows)
    assert all("valid" not in r and "test" not in r for r in refit_rows)
    assert summary["selection"] == "refit" and summary["valid"] == selection_rows[summary["best_epoch"]]["valid"]
    assert run.read_summary()["test"] == summary["test"]
    assert not (run.path / "refit" / "checkpoint.pt").exists() and run.load_checkpoint()["finished"]


def test_refit_is_the_literature_trajectory_at_the_selected_epoch(tiny, tmp_path):
    refit, _ = _train(tiny, tmp_path, "refit", "r", epochs=3, patience=0)
    literature, run = _train(tiny, tmp_path, "literature", "l", epochs=3, patience=0)
    row = {r["epoch"]: r for r in run.read_epochs()}[refit["best_epoch"]]
    assert row["test"] == refit["test"]
    assert literature["test"] == {m: max(r["test"][m] for r in run.read_epochs()) for m in literature["test"]}


def test_literature_evaluates_the_test_split_every_epoch(tiny, tmp_path, monkeypatch):
    counter = CountingEvaluate(tiny)
    monkeypatch.setattr(ev, "evaluate", counter)
    summary, run = _train(tiny, tmp_path, "literature", epochs=3, patience=0)
    assert counter.calls == ["test"] * 3 + ["valid"] * 2  # the audit still re-ranks validation
    assert summary["test_selected"] is True and summary["selection"] == "literature"
    assert [r["examples"] for r in run.read_epochs()] == [len(tiny.train) + len(tiny.valid)] * 3


def test_baselines_are_refit_on_train_and_valid_for_the_test(tiny, tmp_path):
    fitted = []

    class Spy(Pop):
        def fit(self, split):
            fitted.append(len(split))
            return super().fit(split)

    for selection, expected in (("valid", [len(tiny.train)]),
                                ("refit", [len(tiny.train), len(tiny.train) + len(tiny.valid)])):
        fitted.clear()
        summary = train_model(Spy(tiny.n_items), tiny, {}, Run(tmp_path / selection, "pop", 0), progress=False,
                              selection=selection)
        assert fitted == expected and summary["selection"] == selection


def _run(tmp_path, *args):
    return cli.main(["run", "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--dataset", "synthetic:tiny",
                     "--epochs", "2", *args])


def test_literature_output_cannot_be_rendered_without_its_label(tmp_path, capsys):
    assert _run(tmp_path, "--models", "pop,srgnn", "--selection", "literature", "--run-id", "lit") == 0
    printed = capsys.readouterr().out
    results = collect_results(RunDir(tmp_path / "runs" / "lit"))
    assert results["selection"] == "literature"
    for text in (printed, results_text(results), results_markdown(results),
                 (tmp_path / "runs" / "lit" / "results.md").read_text()):
        assert "TEST-SELECTED, OPTIMISTIC" in text and "HR@20 best-on-test" in text
    assert read_json(tmp_path / "runs" / "lit" / "config.json")["selection"] == "literature"


def test_refit_is_the_default_and_recorded(tmp_path, capsys):
    assert _run(tmp_path, "--models", "pop,srgnn", "--run-id", "default") == 0
    assert read_json(tmp_path / "runs" / "default" / "config.json")["selection"] == "refit"
    assert "Selection: refit" in capsys.readouterr().out
    assert cli.main(["run", "--runs-dir", str(tmp_path / "runs"), "--resume", "default", "--selection", "valid"]) == 2


def test_refit_resumes_in_its_second_phase(tiny, tmp_path):
    """A crash during the refit resumes there: the selection phase is not trained again."""
    straight, _ = _train(tiny, tmp_path, "refit", "a", epochs=3, patience=0)

    class Crash(RuntimeError):
        pass

    calls = {"n": 0}

    def crashing():
        model = mean_model(tiny.n_items)
        original = model.loss

        def loss(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise Crash()
            return original(batch)

        model.loss = loss
        return model

    run = Run(tmp_path / "b", "mean", 0)
    with pytest.raises(Crash):
        train_model(mean_model(tiny.n_items), tiny, dict(CFG, epochs=3, patience=0), run, progress=False,
                    selection="refit", rebuild=crashing, checkpoint_every=1)
    selection_epochs = run.read_epochs()
    resumed = train_model(mean_model(tiny.n_items), tiny, dict(CFG, epochs=3, patience=0), run, progress=False,
                          selection="refit", rebuild=lambda: mean_model(tiny.n_items), checkpoint_every=1)
    assert run.read_epochs() == selection_epochs  # phase 1 was restored, not retrained
    assert resumed["test"] == straight["test"]
    assert np.array_equal(run.read_ranks()["expected"], Run(tmp_path / "a").read_ranks()["expected"])


def test_a_sweep_is_not_continued_under_another_selection(tmp_path):
    common = ["sweep", "--model", "sknn", "--param", "k", "--values", "5", "--dataset", "synthetic:micro",
              "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--sweep-id", "s"]
    assert cli.main(common + ["--selection", "valid"]) == 0
    assert cli.main(common + ["--selection", "literature"]) == 2
    assert cli.main(common) == 0  # without --selection: the recorded one
