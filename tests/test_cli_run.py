"""`sbr-bench run` end to end on synthetic:tiny with small stand-in models (registered for the test)."""


import pytest
from torch_geometric.utils import scatter

from sbr_bench import cli
from sbr_bench.experiment import DEFAULT_EPOCH_CAPS, Experiment
from sbr_bench.io import read_json
from sbr_bench.models import registry
from sbr_bench.models.base import DotScorer, EmbeddingEncoder, Readout


class MeanReadout(Readout):
    def forward(self, enc, batch):
        return scatter(enc.h, enc.pos_batch, dim=0, dim_size=enc.num_sessions, reduce="mean")


class NanReadout(MeanReadout):
    def forward(self, enc, batch):
        return super().forward(enc, batch) * float("nan")


def spec(readout):
    return registry.ModelSpec(encoder=lambda n_items, cfg: EmbeddingEncoder(cfg["dim"]), readout=lambda cfg: readout(),
                              scorer=lambda cfg: DotScorer(), defaults=dict(dim=16, batch_size=100, lr=0.01))


@pytest.fixture(autouse=True)
def test_models(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry.specs(), meanpool=spec(MeanReadout),
                                                 nanmodel=spec(NanReadout)))


def run(tmp_path, *args):
    return cli.main(["run", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
                     "--no-progress", *args])


def test_failed_model_is_recorded_and_others_finish(tmp_path, capsys):
    code = run(tmp_path, "--dataset", "synthetic:tiny", "--models", "nanmodel,meanpool", "--seeds", "2",
               "--epochs", "1", "--run-id", "r1")
    out = capsys.readouterr()
    assert code == 0
    root = tmp_path / "runs" / "r1"
    failed = read_json(root / "nanmodel" / "seed0" / "summary.json")
    assert failed["status"] == "failed" and "non-finite loss" in failed["reason"]
    results = read_json(root / "results.json")
    assert results["models"]["nanmodel"]["status"] == "failed"
    mean = results["models"]["meanpool"]
    assert mean["status"] == "ok" and mean["seeds_ok"] == [0, 1]
    # results.json numbers are exactly the per-seed summaries' mean (and their spread)
    per_seed = [read_json(root / "meanpool" / f"seed{s}" / "summary.json")["test"] for s in (0, 1)]
    for metric in ("HR@20", "MRR@20", "NDCG@10"):
        values = [p[metric] for p in per_seed]
        assert mean["test"][metric]["mean"] == pytest.approx(sum(values) / 2, abs=1e-12)
        assert mean["test"][metric]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-12)
    assert per_seed[0] != per_seed[1]  # different seeds really differ
    config, env = read_json(root / "config.json"), read_json(root / "env.json")
    assert config["seeds"] == [0, 1] and config["cfg"]["meanpool"]["epochs"] == 1
    assert config["dataset"]["stats"]["n_items"] == 200 and len(config["dataset"]["fingerprint"]) == 16
    assert env["versions"]["torch"] and env["cpu_count"] >= 1
    md = (root / "results.md").read_text()
    assert "| meanpool |" in md and "failed" in md and "NDCG@20" in md
    assert "meanpool" in out.out and "HR@20" in out.out and "non-finite loss" in out.err


def test_all_failed_exits_one(tmp_path):
    assert run(tmp_path, "--dataset", "synthetic:tiny", "--models", "nanmodel", "--epochs", "1") == 1


TINY = ["--dataset", "synthetic:tiny"]


@pytest.mark.parametrize("args, message", [
    (TINY + ["--models", "meanpool", "--set", "nosuchkey=1"], "nosuchkey"),
    (TINY + ["--models", "meanpool", "--set", "other.lr=1"], "not among the models"),
    (TINY + ["--models", "nosuchmodel"], "unknown model"),
    (TINY + ["--models", "meanpool", "--seeds", "0"], "at least one seed"),
    (["--resume", "nosuchrun"], "no run found"),
    (["--resume", "x", "--models", "meanpool"], "drop --models"),
    (TINY + ["--models", "meanpool", "--precision", "tf32", "--device", "cpu"], "tf32 is a mode of CUDA"),
])
def test_usage_errors_exit_two_with_one_line(tmp_path, capsys, args, message):
    assert run(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_precision_option_is_every_neural_models_setting(tmp_path):
    assert run(tmp_path, *TINY, "--models", "pop,meanpool", "--epochs", "1", "--precision", "bf16",
               "--run-id", "p") == 0
    config = read_json(tmp_path / "runs" / "p" / "config.json")
    assert config["cfg"]["meanpool"]["precision"] == "bf16" and "precision" not in config["cfg"]["pop"]


def test_profile_prints_phases_and_keeps_nothing(tmp_path, capsys):
    assert run(tmp_path, "--dataset", "synthetic:tiny", "--models", "meanpool", "--profile") == 0
    out = capsys.readouterr().out
    assert "backward+step" in out and "meanpool" in out
    assert not (tmp_path / "runs").exists()


def test_profile_table_has_throughput_memory_and_scoring_bound(tmp_path, capsys):
    assert run(tmp_path, "--profile", "--dataset", "synthetic:micro", "--models", "srgnn,pop", "--threads", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    for column in ("train s", "data", "forward", "backward+step", "eval", "ex/s", "peak MB", "bound s", "train/bound"):
        assert column in header
    srgnn = next(line.split() for line in lines if line.startswith("srgnn "))
    pop = next(line.split() for line in lines if line.startswith("pop "))
    assert srgnn[-1].endswith("x") and float(srgnn[-1][:-1]) > 0 and float(srgnn[-2]) > 0  # ratio, bound
    assert pop[1] == "fit"
    assert any(line.startswith("bound s = the scoring products alone") for line in lines)
    assert not (tmp_path / "runs").exists()


def test_epoch_default_is_capped_on_synthetic_and_explicit_settings_win():
    scoped = Experiment(models=["meanpool"], model_overrides={"meanpool": {"lr": 0.5}})
    cfg = scoped.model_configs(["meanpool"], "synthetic-tiny")["meanpool"]
    assert cfg["epochs"] == DEFAULT_EPOCH_CAPS["synthetic"] and cfg["lr"] == 0.5
    assert scoped.model_configs(["meanpool"], "diginetica")["meanpool"]["epochs"] == 30
    explicit = Experiment(models=["meanpool"], overrides={"epochs": 7}, batch_size=64)
    cfg = explicit.model_configs(["meanpool"], "synthetic")["meanpool"]
    assert cfg["epochs"] == 7 and cfg["batch_size"] == 64


def test_existing_run_id_is_refused(tmp_path, capsys):
    assert run(tmp_path, "--dataset", "synthetic:tiny", "--models", "meanpool", "--epochs", "1", "--run-id", "same") == 0
    assert run(tmp_path, "--dataset", "synthetic:tiny", "--models", "meanpool", "--epochs", "1", "--run-id", "same") == 2
    err = capsys.readouterr().err
    assert "--run-id same: " in err and "already exists; resume that run or choose another id" in err


def test_help_is_a_paragraph_with_examples_and_version_prints_the_version(capsys):
    from sbr_bench import __version__
    from sbr_bench.cli import main as cli_main

    with pytest.raises(SystemExit) as done:
        cli_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    description = text.split("\n\n")[1]
    assert description.startswith("sbr-bench trains and evaluates") and description.rstrip().endswith(".")
    assert "examples:" in text and "sbr-bench run --models all" in text
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert capsys.readouterr().out.strip() == f"sbr-bench {__version__}"


TF32 = ["--set", "precision=tf32"]


@pytest.mark.parametrize("command", [
    ["run", "--engine", "ray", "--epochs", "1"] + TF32,
    ["tune", "--budget", "1", "--epochs", "1"] + TF32,
    ["tune", "--engine", "ray", "--budget", "1", "--epochs", "1"] + TF32,
    ["sweep", "--engine", "ray", "--grid", "dim=8,16", "--epochs", "1"] + TF32,
    ["sweep", "--grid", "precision=fp32,tf32", "--epochs", "1"],  # no folder for the fp32 point either
])
def test_tf32_on_cpu_is_refused_before_anything_starts(tmp_path, capsys, command):
    """Also where Ray would run the units: its CPU-only workers have no tf32 either (only workers given
    GPUs are left to check their own device)."""
    if "ray" in command:
        pytest.importorskip("ray", reason="Ray is an optional extra (pip install -e '.[ray]')")
    models = ["--model", "srgnn"] if command[0] == "sweep" else ["--models", "srgnn"]
    args = command + TINY + models + ["--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--data-dir",
                                      str(tmp_path / "datasets")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "tf32 is a mode of CUDA" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_only_ray_workers_with_gpus_check_their_precision_themselves():
    from sbr_bench.errors import ConfigError
    from sbr_bench.training import check_precisions

    cfgs = [{"precision": "fp32"}, {"precision": "tf32"}]
    check_precisions(cfgs, None, ray_gpus=1)
    for device, ray_gpus in (("cpu", None), ("cuda", 0)):
        with pytest.raises(ConfigError, match="tf32"):
            check_precisions(cfgs, device, ray_gpus)
