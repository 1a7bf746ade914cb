"""`sbr-bench tune`: equal budgets on validation only (Optuna), search spaces next to the models' defaults,
resume after kill -9, the Ray Tune engine, and the tuned table in the report."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="Optuna is the tune extra (pip install -e '.[tune]')")

from sbr_bench.cli import main  # noqa: E402
from sbr_bench.errors import ConfigError  # noqa: E402
from sbr_bench.experiment import Experiment  # noqa: E402
from sbr_bench.io import read_json, read_jsonl  # noqa: E402
from sbr_bench.models import space  # noqa: E402
from sbr_bench.models.registry import model_config, search_space, specs  # noqa: E402
from sbr_bench.tuning import Tuning  # noqa: E402


def tune_args(root, *args):
    fresh = [] if "--resume" in args else ["--dataset", "synthetic:tiny", "--data-dir", str(root / "data")]
    return ["tune", *fresh, "--runs-dir", str(root / "runs"), "--no-progress", *args]


def study(root, tune_id, model):
    return optuna.load_study(study_name=f"{tune_id}/{model}", storage=f"sqlite:///{root / 'runs' / tune_id / 'study.db'}")


# --- search spaces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in specs()] + ["srgnn+attenmixer", "sgnnhn+attenmixer"])
def test_every_default_lies_in_its_models_typed_space(name):
    cfg, dists = model_config(name), search_space(name)
    assert bool(dists) == (name not in ("pop", "spop", "oracle")), "every model with parameters can be tuned"
    for key, dist in dists.items():
        assert dist.contains(cfg[key]), f"{name}.{key} = {cfg[key]!r} is outside {dist.describe()}"


def test_an_ablation_does_not_tune_what_defines_it():
    assert "levels" in search_space("attenmixer") and "levels" not in search_space("attenmixer-M")
    assert set(search_space("srgnn+attenmixer")) >= {"step", "levels", "heads", "lr"}  # encoder's + readout's


def test_models_show_prints_the_search_space(capsys):
    assert main(["models", "show", "attenmixer"]) == 0
    out = capsys.readouterr().out
    assert "levels                       1 .. 10 (whole numbers)" in out
    assert "heads                        one of 1, 2, 4, 8, 16, 32" in out
    assert main(["models", "show", "pop"]) == 0 and "search space: none" in capsys.readouterr().out


def test_a_config_file_replaces_a_space_and_set_fixes_a_parameter(tmp_path):
    path = tmp_path / "tune.toml"
    path.write_text('models = ["srgnn", "attenmixer"]\n[model_overrides.srgnn]\ndim = 64\n'
                    "[tune]\nbudget = 3\n[tune.space.srgnn]\nstep = [1, 2]\nlr = {low = 1e-4, high = 1e-3, log = true}\n"
                    "dim = [32, 64]\n[tune.space.attenmixer]\nlp_norm = {low = 1, high = 6}\n")
    tuning = Tuning.from_toml(path)
    spaces = tuning.spaces(["srgnn", "attenmixer"])
    assert spaces["srgnn"] == {"step": space.Choice((1, 2)), "lr": space.Float(1e-4, 1e-3, True)}  # dim is fixed
    assert spaces["attenmixer"] == {"lp_norm": space.Float(1.0, 6.0)}  # whole bounds of a float parameter
    assert Tuning.from_toml(_write(tmp_path, tuning.to_toml())).spaces(["srgnn", "attenmixer"]) == spaces


def _write(tmp_path, text):
    path = tmp_path / "again.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("table, key, words", [
    ("step = {low = 0.5, high = 2.5}", "tune.space.srgnn.step", "a whole number: a range does not fit"),
    ("stepp = [1, 2]", "tune.space.srgnn.stepp", "'srgnn' has no parameter 'stepp'"),
    ("lr = {low = 0, high = 1, log = true}", "tune.space.srgnn.lr", "a log range needs low > 0"),
    ("lr = {low = 1e-2, high = 1e-3}", "tune.space.srgnn.lr", "low < high"),
    ("step = ['one']", "tune.space.srgnn.step", "'step' is a whole number"),
    ("lr = 0.1", "tune.space.srgnn.lr", "expected a list of values or a table"),
])
def test_a_wrong_space_is_one_error_naming_model_and_key(table, key, words):
    import tomllib

    with pytest.raises(ConfigError) as e:
        Tuning(Experiment(models="srgnn"), budget=2,
               space={"srgnn": tomllib.loads(table)}).spaces(["srgnn"])
    assert e.value.key == key and words in str(e.value)


# --- the command: tuned, trained, reported ------------------------------------------------------

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    code = main(tune_args(root, "--models", "srgnn,sknn", "--budget", "4", "--epochs", "2", "--run-id", "t"))
    return root, code


def test_tune_gives_every_model_the_same_budget_starting_from_its_defaults(tuned):
    root, code = tuned
    assert code == 0
    folder = root / "runs" / "t"
    summary, record = read_json(folder / "tuning.json"), read_json(folder / "tune.json")
    for name in ("srgnn", "sknn"):
        entry = summary["models"][name]
        assert entry["trials"] == 4 and entry["complete"] == 4
        first = entry["history"][0]
        assert first["defaults"] and first["params"] == {k: model_config(name)[k] for k in first["params"]}
        assert entry["best_value"] == max(t["value"] for t in entry["history"])
        assert len(study(root, "t", name).trials) == 4
    assert {record["cfg"][m]["patience"] for m in ("srgnn",)} == {3} and record["cfg"]["srgnn"]["epochs"] == 2
    for trial in range(4):  # each trial's validation curve, at most --epochs long; no weights kept
        rows = read_jsonl(folder / "trials" / "srgnn" / str(trial) / "epochs.jsonl")
        assert 1 <= len(rows) <= 2 and "valid" in rows[0] and "test" not in rows[0]
        assert not (folder / "trials" / "srgnn" / str(trial) / "checkpoint.pt").exists()


def test_the_best_configurations_and_the_defaults_train_over_the_seeds(tuned):
    root, _ = tuned
    folder = root / "runs" / "t"
    best = {m: e["best_params"] for m, e in read_json(folder / "tuning.json")["models"].items()}
    for which in ("tuned", "defaults"):
        config, results = read_json(folder / which / "config.json"), read_json(folder / which / "results.json")
        assert set(results["models"]) == {"srgnn", "sknn"}
        assert all(r["seeds_ok"] == [0] for r in results["models"].values())
        for name, params in best.items():
            expected = params if which == "tuned" else {k: model_config(name)[k] for k in params}
            assert {k: config["cfg"][name][k] for k in params} == expected


def test_the_report_shows_tuned_beside_defaults_with_budgets_and_plots(tuned, tmp_path):
    root, _ = tuned
    assert main(["report", "--runs-dir", str(root / "runs"), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## Tuned under equal budgets: t "):]
    assert "Budget: 4 trials per model, of Optuna's tpe sampler" in section and "Budgets differ" not in section
    header = next(line for line in section.splitlines() if line.startswith("| model"))
    assert "tuned MRR@20" in header and "defaults MRR@20" in header and "best parameters" in header
    assert section.index("| sknn") < section.index("| srgnn")  # Table 2's order
    for name in ("srgnn", "sknn"):
        for stem in (f"tuning_t_{name}_history", f"tuning_t_{name}_importance"):  # at both widths (report style)
            assert (tmp_path / f"{stem}.png").stat().st_size > 0 and (tmp_path / f"{stem}_column.pdf").stat().st_size > 0


def test_the_recorded_tuning_reads_back(tuned):
    root, _ = tuned
    again = Tuning.from_toml(root / "runs" / "t" / "tune.toml")
    assert (again.budget, again.sampler, again.experiment.epochs) == (4, "tpe", 2)
    assert again.experiment.models == ["srgnn", "sknn"]


# --- validation only ----------------------------------------------------------------------------------

def test_tuning_never_evaluates_the_test_split(tmp_path, monkeypatch):
    """Call counting: every evaluation during tuning is of the validation split, one per trained epoch."""
    import sbr_bench.training as training

    evaluated, real = [], training.evaluate_split
    monkeypatch.setattr(training, "evaluate_split", lambda model, split, *a, **k: (
        evaluated.append(len(split)), real(model, split, *a, **k))[1])
    experiment = Experiment(models="srgnn,sknn", dataset={"name": "synthetic:tiny", "data_dir": str(tmp_path / "d")},
                            epochs=2, runs_dir=str(tmp_path / "runs"), run_id="v")
    results = Tuning(experiment, budget=3).run(train=False)
    dataset = experiment.load_dataset()
    summary = results.summary["models"]
    epochs = sum(len(read_jsonl(results.path / "trials" / "srgnn" / str(t["number"]) / "epochs.jsonl"))
                 for t in summary["srgnn"]["history"])
    assert evaluated == [len(dataset.valid)] * (epochs + summary["sknn"]["trials"])
    assert len(dataset.test) not in evaluated and not (results.path / "tuned").exists()


def test_a_time_budget_runs_trials_until_it_is_spent(tmp_path):
    assert main(tune_args(tmp_path, "--models", "sknn", "--budget-hours", "1e-9", "--run-id", "h", "--tune-only")) == 0
    summary = read_json(tmp_path / "runs" / "h" / "tuning.json")
    assert summary["budget_hours"] == 1e-9 and summary["models"]["sknn"]["trials"] == 1


def test_the_median_pruner_stops_trials_below_the_median_and_is_recorded(tmp_path, monkeypatch):
    import sbr_bench.tuning as tuning

    monkeypatch.setattr(tuning, "pruner_settings", lambda name: {"name": name, "n_startup_trials": 1,
                                                                 "n_warmup_steps": 0})
    config = tmp_path / "prune.toml"
    config.write_text('[tune]\nsampler = "random"\n[tune.space.srgnn]\nlr = [0.001, 1e-7]\n')
    assert main(tune_args(tmp_path, "--config", str(config), "--models", "srgnn", "--budget", "5", "--epochs", "3",
                          "--pruner", "median", "--run-id", "p", "--tune-only")) == 0
    folder = tmp_path / "runs" / "p"
    assert read_json(folder / "tune.json")["pruner"]["name"] == "median"
    history = read_json(folder / "tuning.json")["models"]["srgnn"]["history"]
    assert len(history) == 5 and any(t["state"] == "PRUNED" for t in history)
    for trial in history:  # a learning rate of 1e-7 learns nothing: below the median after its first epoch
        assert trial["state"] == ("PRUNED" if trial["params"]["lr"] == 1e-7 else "COMPLETE")
        if trial["number"] > 0 and trial["state"] == "COMPLETE":  # the defaults again: not trained twice
            assert trial["same_as"] == 0 and trial["value"] == history[0]["value"]
            continue
        epochs = read_jsonl(folder / "trials" / "srgnn" / str(trial["number"]) / "epochs.jsonl")
        assert len(epochs) == (1 if trial["state"] == "PRUNED" else 3)


# --- resume after kill -9 -----------------------------------------------------------------------------

def test_kill_9_mid_trial_then_resume_retries_that_trial_once(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "sbr_bench.cli", *tune_args(tmp_path, "--models", "srgnn", "--budget", "3",
                                                             "--epochs", "4", "--run-id", "k", "--no-defaults")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    curve = tmp_path / "runs" / "k" / "trials" / "srgnn" / "1" / "epochs.jsonl"
    try:
        deadline = time.time() + 240
        while not (curve.exists() and curve.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.time() < deadline, "trial 1 did not finish an epoch in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # trial 1 is mid-way: one epoch of four recorded
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = study(tmp_path, "k", "srgnn").trials
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"]

    assert main(tune_args(tmp_path, "--resume", "k")) == 0
    trials = study(tmp_path, "k", "srgnn").trials
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["interrupted"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == trials[1].params and retry[0].state.name == "COMPLETE"
    entry = read_json(tmp_path / "runs" / "k" / "tuning.json")["models"]["srgnn"]
    assert entry["trials"] == 3 and entry["interrupted"] == 1 and len(trials) == 4
    assert not any(t.state.name == "RUNNING" for t in trials)
    assert read_json(tmp_path / "runs" / "k" / "tuned" / "results.json")["models"]["srgnn"]["seeds_ok"] == [0]
    assert not (tmp_path / "runs" / "k" / "defaults").exists()  # --no-defaults is recorded


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--models", "sknn"], "--budget: give a budget"),
    (["--models", "sknn", "--budget", "0"], "--budget 0: must be at least 1 trial"),
    (["--models", "sknn", "--budget-hours", "-1"], "--budget-hours -1.0: must be more than 0"),
    (["--models", "sknn", "--budget", "2", "--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open"),
    (["--models", "sknn", "--budget", "2", "--engine", "ray", "--pruner", "median"], "--pruner median: pruning runs"),
    (["--resume", "nothere"], "--resume nothere: no tuning found"),
    (["--resume", "nothere", "--budget", "3"], "drop --budget"),
    (["--models", "sknn", "--budget", "2", "--study-seed", "-1"], "--study-seed -1: must lie in 0 .. 2**32 - 1"),
    (["--models", "sknn", "--budget", "2", "--address", "auto"], "--address and --max-concurrent apply to --engine ray"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, args, words):
    assert main(tune_args(tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_wrong_tune_setting_in_a_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "t.toml"
    path.write_text("[tune]\nbudgett = 3\n")
    assert main(tune_args(tmp_path, "--config", str(path))) == 2
    assert f"{path}: tune.budgett: unknown setting" in capsys.readouterr().err


def test_storage_urls_are_recorded_without_their_password():
    from sbr_bench.tuning import _shown_url

    shown = _shown_url("postgresql://me:secret@db.example/studies")
    assert "secret" not in shown and "db.example/studies" in shown


# --- the Ray Tune engine --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install -e '.[ray]')")
    pytest.importorskip("ray.tune", reason="Ray Tune is part of the ray extra (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_tune_finds_the_local_engines_best_configuration(ray_instance, tmp_path):
    """A deterministic toy problem (session kNN on the tiny synthetic data): one trial at a time, the same
    sampler seed, so both engines must propose the same trials and pick the same best."""
    for engine, extra in (("local", []), ("ray", ["--max-concurrent", "1"])):
        assert main(tune_args(tmp_path, "--models", "sknn", "--budget", "4", "--run-id", engine, "--engine", engine,
                              *extra, "--tune-only")) == 0
    local, ray = (read_json(tmp_path / "runs" / e / "tuning.json")["models"]["sknn"] for e in ("local", "ray"))
    assert [t["params"] for t in ray["history"]] == [t["params"] for t in local["history"]]
    assert ray["best_params"] == local["best_params"] and ray["best_value"] == local["best_value"]
    assert ray["trials"] == 4 and any(p.name.startswith("ray-") for p in (tmp_path / "runs" / "ray" / "trials" / "sknn").iterdir())


def test_the_caption_warns_when_budgets_differ():
    from sbr_bench.report.tuning import _caption

    record = {"budget": 4, "budget_hours": None, "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 10},
              "pruner": {"name": "none"}, "objective": "valid MRR@20", "dataset": {"valid_fraction": 0.1},
              "trial_seed": 0, "seeds": [0], "selection": "refit",
              "cfg": {"srgnn": {"epochs": 2, "patience": 3}, "narm": {"epochs": 2, "patience": 5}, "sknn": {"k": 100}}}
    defaults = [{"defaults": True}]
    summary = {"models": {"srgnn": {"tuned": True, "trials": 4, "history": defaults},
                          "narm": {"tuned": True, "trials": 3, "history": defaults},
                          "sknn": {"tuned": True, "trials": 4, "history": [{}]}}}
    text = " ".join(_caption(record, summary))
    assert "**Budgets differ**" in text and "srgnn 4, narm 3, sknn 4" in text and "patience differ: srgnn 3, narm 5" in text
    assert "first trial is its defaults but for sknn (defaults outside the space)" in text
    summary["models"]["sknn"]["history"] = defaults
    summary["models"]["narm"]["trials"] = 4
    record["cfg"]["narm"]["patience"] = 3
    text = " ".join(_caption(record, summary))
    assert "Budgets differ" not in text and "every model's first trial is its defaults." in text


def test_a_space_that_is_not_a_table_is_one_error():
    with pytest.raises(ConfigError) as e:
        Tuning(Experiment(models="srgnn"), budget=2, space={"srgnn": [1, 2]})
    assert e.value.key == "tune.space.srgnn"


def test_a_time_budget_over_a_small_space_stops_when_every_configuration_was_tried(tmp_path):
    from sbr_bench.tuning import MAX_REPEATS

    start = time.time()
    assert main(tune_args(tmp_path, "--models", "ar", "--budget-hours", "1", "--run-id", "f", "--tune-only")) == 0
    entry = read_json(tmp_path / "runs" / "f" / "tuning.json")["models"]["ar"]
    assert 4 <= entry["trials"] <= 4 + MAX_REPEATS and time.time() - start < 120  # four pruning values
    assert len({t["params"]["pruning"] for t in entry["history"]}) == 4


def test_resume_refuses_a_storage_without_the_study(tmp_path, capsys):
    assert main(tune_args(tmp_path, "--models", "sknn", "--budget", "2", "--run-id", "m", "--tune-only")) == 0
    (tmp_path / "runs" / "m" / "study.db").unlink()  # e.g. a moved database
    assert main(tune_args(tmp_path, "--resume", "m")) == 2
    assert "the study of sknn (2 trials so far) is not in" in capsys.readouterr().err


def test_relative_sqlite_urls_are_recorded_absolute(tmp_path, monkeypatch):
    from sbr_bench.tuning import absolute_sqlite

    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    assert absolute_sqlite("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_sqlite("postgresql://host/db") == "postgresql://host/db"


def test_without_optuna_tune_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    assert main(tune_args(tmp_path, "--models", "sknn", "--budget", "2")) == 2
    assert "Optuna is not installed; install the extra with `pip install -e '.[tune]'`" in capsys.readouterr().err
