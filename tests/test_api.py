"""The library-first core: the README's quick starts, `Experiment` from Python, from its TOML through the
CLI and under the Ray engine, typed config errors, `train`, `Evaluator`, plugins and `models list`."""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import sbr_bench
from sbr_bench import cli
from sbr_bench.errors import ConfigError
from sbr_bench.experiment import DataConfig, Experiment, toml_text
from sbr_bench.io import read_json
from sbr_bench.models import registry

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["HR@20", "MRR@20", "NDCG@20"]


def _readme_block(heading: str, language: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_readme_python_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _readme_block("Python quick start", "python")
    namespace = {}
    exec(compile(code, "README.md (Python quick start)", "exec"), namespace)  # noqa: S102 - our own README
    results, again = namespace["results"], namespace["again"]
    assert list(results.metrics["model"]) == ["pop", "pop", "srgnn", "srgnn"]
    assert again.models == ["pop", "srgnn"] and again.seeds == [0, 1]
    assert not (tmp_path / "runs").joinpath("sbr-bench-train").exists()


def test_readme_cli_quick_start_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for line in _readme_block("CLI quick start", "bash").strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "sbr-bench"
        assert cli.main(argv[1:] + (["--no-progress"] if argv[1] == "run" else [])) == 0, line
    first, again = read_json(tmp_path / "runs/first/config.json"), read_json(tmp_path / "runs/again/config.json")
    assert again["cfg"] == first["cfg"] and again["seeds"] == [0, 1] and first["seeds"] == [0]
    for model in first["models"]:  # seed 0 of the re-run is the first run's seed 0
        assert read_json(tmp_path / f"runs/again/{model}/seed0/summary.json")["test"] == \
            read_json(tmp_path / f"runs/first/{model}/seed0/summary.json")["test"]
    assert "heads" in capsys.readouterr().out


def _test_metrics(run_path: Path, models, seeds=(0,)) -> dict:
    return {(m, s): read_json(run_path / m / f"seed{s}" / "summary.json")["test"] for m in models for s in seeds}


def test_python_toml_and_ray_give_identical_metrics(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    models = ["spop", "srgnn"]
    experiment = Experiment(models=models, dataset="synthetic:tiny", epochs=1, selection="valid",
                            model_overrides={"srgnn": {"dim": 16}}, run_id="python")
    python = experiment.run()
    assert cli.main(["run", "--config", str(python.path / "experiment.toml"), "--run-id", "toml", "--no-progress"]) == 0
    ray = experiment.replace(run_id="ray").run(engine="ray", cpus_per_task=1)
    expected = _test_metrics(python.path, models)
    assert _test_metrics(tmp_path / "runs/toml", models) == expected
    assert _test_metrics(ray.path, models) == expected
    assert read_json(tmp_path / "runs/toml/config.json")["cfg"] == read_json(python.path / "config.json")["cfg"]
    frame = python.metrics
    assert list(frame.columns[:6]) == ["model", "seed", "status", "selection", "best_epoch", "epochs_trained"]
    assert frame.loc[frame.model == "srgnn", "MRR@20"].item() == expected[("srgnn", 0)]["MRR@20"]
    ranks = python.ranks("srgnn")
    assert set(ranks) == {"expected", "optimistic", "pessimistic", "length"} and len(ranks["expected"]) == 1250


def test_flags_override_the_file_and_errors_name_the_file_or_the_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(toml_text({"models": ["pop"], "seeds": 2, "dataset": {"name": "synthetic:tiny"},
                               "model_overrides": {"sknn": {"k": 7}}}))
    experiment = cli.build_parser().parse_args(["run", "--config", str(path), "--models", "sknn", "--seeds", "1"])
    from sbr_bench.commands.run import experiment_of

    built = experiment_of(experiment)
    assert built.models == ["sknn"] and built.seeds == [0] and built.model_overrides == {"sknn": {"k": 7}}
    cases = [
        ('models = ["pop"]\nepochs = "two"\n', "exp.toml: epochs = 'two': expected a whole number"),
        ('models = ["pop"]\nmodle = 1\n', "exp.toml: modle: unknown setting"),
        ('models = ["pop"\n', "exp.toml: not a valid TOML file"),
        ('[dataset]\nvalid_fraction = 2\n', "exp.toml: dataset.valid_fraction = 2: must lie between 0 and 1"),
        ('models = ["srgnn"]\n[model_overrides.srgnn]\nlr = "fast"\n',
         "exp.toml: model_overrides.srgnn.lr = 'fast': 'lr' is a number"),
    ]
    for text, message in cases:
        path.write_text(text)
        assert cli.main(["run", "--config", str(path), "--dataset", "synthetic:tiny", "--no-progress"]) == 2, text
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (text, err)
    # the same mistake given as an option is worded as the option
    assert cli.main(["run", "--models", "srgnn", "--set", "lr=fast", "--dataset", "synthetic:tiny"]) == 2
    assert "--set lr=fast: 'lr' is a number" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("settings, key", [
    (dict(models=[]), "models"), (dict(seeds=0), "seeds"), (dict(seeds=[1, -1]), "seeds"),
    (dict(epochs=1.5), "epochs"), (dict(selection="best"), "selection"), (dict(dataset={"nmae": "x"}), "dataset.nmae"),
    (dict(deterministic="yes"), "deterministic"), (dict(run_id="../x"), "run_id"), (dict(checkpoint_every=-1), "checkpoint_every"),
])
def test_experiment_settings_are_validated_naming_the_key(settings, key):
    with pytest.raises(ConfigError) as info:
        Experiment(**settings)
    assert info.value.key == key


def test_unknown_model_parameters_and_models_are_config_errors():
    with pytest.raises(ConfigError) as info:
        Experiment(models=["srgnn"], overrides={"levels": 2}).model_configs(["srgnn"], "synthetic")
    assert info.value.key == "overrides.levels"
    with pytest.raises(ConfigError) as info:
        Experiment(models=["srgnn"], model_overrides={"srgnn": {"step": True}}).model_configs(["srgnn"], "x")
    assert info.value.key == "model_overrides.srgnn.step"
    with pytest.raises(ConfigError) as info:
        registry.build_model("attenmixer", 10, {"heads": 3})
    assert info.value.key == "model_overrides.attenmixer.heads" and info.value.value == 3


def test_experiment_file_round_trip():
    experiment = Experiment(models="srgnn,pop", dataset=DataConfig(name="synthetic:tiny", params={"a": 1}), seeds=[3, 1],
                            overrides={"dim": 32}, model_overrides={"srgnn": {"lr": 1e-4, "nonhybrid": True}})
    assert Experiment.from_dict(tomllib.loads(experiment.to_toml())) == experiment


def test_train_and_evaluator_without_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = sbr_bench.load_dataset("synthetic:tiny")
    model = sbr_bench.build_model("srgnn", data.n_items, dim=16, epochs=1)
    summary = sbr_bench.train(model, data, selection="refit")
    assert summary["selection"] == "refit" and list(tmp_path.iterdir()) == []
    evaluator = sbr_bench.Evaluator(data.n_items)
    # the model holds the refit's tested weights: evaluating it again gives the recorded test numbers
    assert evaluator.eval_split(model, data.test).metrics["MRR@20"] == pytest.approx(summary["test"]["MRR@20"])
    # any score function: a constant scorer ranks at random (ties) whatever the item order
    constant = evaluator.eval_split(lambda batch: torch.zeros(batch.num_graphs, data.n_items), data.test)
    assert constant.metrics["HR@20"] == pytest.approx(100 * 20 / data.n_items)


def test_evaluator_on_score_matrices_matches_brute_force():
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.integers(0, 4, size=(50, 9)), dtype=torch.float32)  # many ties
    target = torch.tensor(rng.integers(1, 10, size=50))
    opt, pes = sbr_bench.Evaluator(9, ks=(3,)).ranks(scores, target)
    for row, t, o, p in zip(scores, target, opt, pes):
        s = row[t - 1]
        assert o == 1 + int((row > s).sum()) and p == int((row >= s).sum())
    hr = sbr_bench.Evaluator(9, ks=(3,)).eval(scores, target)["HR@3"]
    expected = np.mean([min(max(3 - o + 1, 0), p - o + 1) / (p - o + 1) for o, p in zip(opt, pes)]) * 100
    assert hr == pytest.approx(expected)
    with pytest.raises(ValueError):
        sbr_bench.Evaluator(9).eval(scores, torch.zeros(50, dtype=torch.long))


def test_registered_models_are_in_all_models_list_and_show(monkeypatch, capsys):
    from sbr_bench.models.base import EmbeddingEncoder, Readout

    class LastReadout(Readout):
        def forward(self, enc, batch):
            return enc.last_h

    monkeypatch.setattr(registry, "_REGISTERED", {})
    monkeypatch.setattr(registry, "_SPECS", dict(registry.specs()))

    @registry.register_model("my-last", readout=lambda cfg: LastReadout(), defaults=dict(dim=8, epochs=1))
    class Last(EmbeddingEncoder):
        def __init__(self, n_items, cfg):
            super().__init__(cfg["dim"])

    assert "my-last" in registry.resolve_names("all")  # a '-' in a name no longer hides it
    assert "my-last+attenmixer" in registry.resolve_names("my-last+attenmixer")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("my-last", registry.specs()["pop"])
    assert cli.main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(re.search(rf"^{re.escape(name)} ", listed, re.M) for name in registry.specs())
    assert cli.main(["models", "show", "my-last"]) == 0
    assert re.search(r"dim\s+8\s+int\s+model", capsys.readouterr().out)
    model = sbr_bench.build_model("my-last", 20)
    assert model.cfg["dim"] == 8


def test_example_plugin_installs_and_trains_by_name(tmp_path):
    """pip-installs examples/plugin into a folder of its own (no index, no build isolation: offline) and
    trains its model by name in a fresh process that has that folder on its path."""
    import shutil

    site, source = tmp_path / "site", tmp_path / "plugin"
    shutil.copytree(ROOT / "examples" / "plugin", source)  # the build writes next to the sources: not ours
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--no-build-isolation", "--target", str(site), str(source)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    listed = subprocess.run([sys.executable, "-m", "sbr_bench.cli", "models", "list"], env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    assert listed.returncode == 0 and re.search(r"^sessionmean .*sbr_sessionmean\.model", listed.stdout, re.M)
    run = subprocess.run([sys.executable, "-m", "sbr_bench.cli", "run", "--models", "sessionmean,pop", "--dataset",
                          "synthetic:tiny", "--epochs", "1", "--run-id", "plugin", "--no-progress"],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = read_json(tmp_path / "runs/plugin/sessionmean/seed0/summary.json")
    assert summary["status"] == "ok" and summary["test"]["HR@20"] > 0


def test_paths_named_in_the_code_and_docs_exist():
    """Every project path a docstring, comment or doc names (docs/..., benchmarks/..., tests/..., sbr_bench/...,
    examples/...) exists; paths into ../shared are the reference material, not ours."""
    pattern = re.compile(r"(?<![\w./])((?:docs|benchmarks|tests|sbr_bench|examples)/[\w./-]*?\.(?:py|md|toml|json))\b")
    missing, checked = [], 0
    files = [*ROOT.glob("sbr_bench/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("docs/*.md"),
             ROOT / "README.md", *ROOT.glob("examples/**/*.md")]
    for path in files:
        for ref in pattern.findall(path.read_text()):
            checked += 1
            if not (ROOT / ref).exists():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, "\n".join(missing)
    assert checked > 50


def test_model_parameters_are_typed_dataclasses_next_to_their_models():
    import dataclasses

    from sbr_bench.models.config import TrainConfig

    for name, spec in registry.specs().items():
        assert dataclasses.is_dataclass(spec.defaults), name
        if isinstance(spec, registry.ModelSpec):
            assert isinstance(spec.defaults, TrainConfig), name
    check = registry.model_config
    assert check("srgnn", {"epochs": 2.0})["epochs"] == 2 and isinstance(check("srgnn", {"epochs": 2.0})["epochs"], int)
    assert check("attenmixer", {"freeze_readout_compat": "attention"})["freeze_readout_compat"] == "attention"
    assert check("attenmixer", {"freeze_readout_compat": True})["freeze_readout_compat"] is True
    for name, key, value, message in [
        ("srgnn", "step", 1.5, "must be a whole number"), ("srgnn", "nonhybrid", 1, "is true or false"),
        ("srgnn", "lr", True, "is a number"), ("srgnn", "lr", float("nan"), "must be a finite number"),
        ("attenmixer", "level_agg", 3, "is str"), ("attenmixer", "freeze_readout_compat", 2, "is bool | str"),
        ("sknn", "k", "many", "is a whole number"), ("srgnn", "epochs", 0, "at least 1"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            check(name, {key: value})
        assert info.value.key == f"model_overrides.{name}.{key}"


def test_options_override_a_runs_experiment_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--models", "pop,srgnn", "--dataset", "synthetic:tiny", "--epochs", "1",
                     "--selection", "valid", "--run-id", "a", "--no-progress"]) == 0
    again = ["run", "--config", "runs/a/experiment.toml", "--no-progress"]
    assert cli.main(again + ["--epochs", "2", "--set", "lr=0.005", "--run-id", "b"]) == 0
    cfg = read_json(tmp_path / "runs/b/config.json")["cfg"]["srgnn"]
    assert cfg["epochs"] == 2 and cfg["lr"] == 0.005
    assert cli.main(again + ["--models", "srgnn", "--run-id", "c"]) == 0
    assert read_json(tmp_path / "runs/c/config.json")["models"] == ["srgnn"]
    capsys.readouterr()
    assert cli.main(again + ["--set", "srgnn.lr=fast", "--run-id", "d"]) == 2
    assert "--set srgnn.lr=fast: 'lr' is a number" in capsys.readouterr().err
    assert cli.main(again + ["--set", "narm.lr=0.1", "--run-id", "e"]) == 2
    assert "--set narm.KEY=...: 'narm' is not among the models" in capsys.readouterr().err
    # a resume takes the device it is given, not only the recorded one
    config = read_json(tmp_path / "runs/a/config.json")
    (tmp_path / "runs/a/config.json").write_text(json.dumps(dict(config, device="cuda:7")))
    assert cli.main(["run", "--resume", "a", "--device", "cpu", "--no-progress"]) == 0


def test_train_takes_settings_that_the_model_cfg_also_has(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = sbr_bench.load_dataset("synthetic:tiny")
    model = sbr_bench.build_model("srgnn", data.n_items, dim=8)
    assert sbr_bench.train(model, data, {"epochs": 1, "lr": 0.01})["epochs_trained"] == 1


def test_experiment_files_hold_any_name_or_refuse_it_clearly():
    data = {"models": ["modèle", "x"], "model_overrides": {"modèle": {"tag": "emoji \U0001F600 and \\ and \""}}}
    assert tomllib.loads(toml_text(data)) == data
    with pytest.raises(ValueError, match="lone surrogate"):
        toml_text({"dataset": {"data_dir": "bad\udcff"}})
    with pytest.raises(ValueError, match="cannot write list"):
        toml_text({"x": [{"a": 1}]})


def test_plugin_defaults_must_be_plain_values():
    with pytest.raises(ValueError, match="the default of 'w' is a list"):
        registry.register_model("listy", registry.BaselineSpec(build=lambda n, cfg: None, defaults={"w": [1]}))
    assert "listy" not in registry._REGISTERED


def test_dissect_epochs_option_wins_over_set_as_before():
    from sbr_bench.commands.dissect import experiment_of

    args = cli.build_parser().parse_args(["dissect", "--set", "epochs=3", "--epochs", "5"])
    assert experiment_of(args).model_overrides["srgnn"]["epochs"] == 5
