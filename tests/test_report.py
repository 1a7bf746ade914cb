"""End-to-end: record real (tiny) runs with the CLI, then rebuild every table and figure from them."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from sbr_bench.cli import main
from sbr_bench.io import read_json

COMMON = ["--dataset", "synthetic:micro", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    runs = str(root / "runs")
    small = ["--set", "dim=8", "--set", "batch_size=64", "--runs-dir", runs] + COMMON
    assert main(["run", "--models", "pop,srgnn,attenmixer,srgnn+attenmixer,attenmixer-M", "--seeds", "2",
                 "--run-id", "main"] + small) == 0
    assert main(["sweep", "--model", "attenmixer", "--param", "levels", "--values", "1..2"] + small) == 0
    assert main(["sweep", "--model", "attenmixer", "--param", "heads", "--values", "1,2"] + small) == 0
    assert main(["dissect", "--model", "srgnn", "--log-every", "2", "--run-id", "dis"] + small) == 0
    out = root / "report"
    assert main(["report", "--runs", runs, "--out", str(out)]) == 0
    return root / "runs", out


def test_every_figure_is_rendered(recorded):
    _, out = recorded
    for stem in ("figure3_density", "figure5_levels", "figure6_heads", "figure7_session_length", "timing_phases"):
        for fmt in ("png", "svg", "pdf"):
            assert (out / f"{stem}.{fmt}").stat().st_size > 1000, stem
    text = (out / "report.md").read_text()
    for label in ("Table 1", "Table 2", "Table 3", "Table 4", "Figure 3", "Figure 5", "Figure 6", "Figure 7"):
        assert label in text
    assert "hardware" in text and "seeds [0, 1]" in text
    assert "no finished run of" in text  # models not recorded are named, not a crash


def test_table_numbers_equal_the_run_records(recorded):
    runs, out = recorded
    t2 = pd.read_csv(out / "table2_overall.csv")
    for model in ("pop", "srgnn", "attenmixer"):
        summaries = [read_json(runs / "main" / model / f"seed{s}" / "summary.json") for s in (0, 1)]
        assert all(s["audit"]["examples"] > 0 for s in summaries)  # the leakage audit ran
        per_seed = [s["test"] for s in summaries]
        for metric in ("HR@20", "MRR@20"):
            row = t2[(t2.model == model) & (t2.metric == metric)].iloc[0]
            values = [p[metric] for p in per_seed]
            assert row["mean"] == pytest.approx(np.mean(values), abs=1e-9)
            assert row["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
    t3 = pd.read_csv(out / "table3_with_attenmixer.csv")
    row = t3[(t3.encoder == "srgnn") & (t3.metric == "HR@20")].iloc[0]
    assert row["improvement_pct"] == pytest.approx(100 * (row["with_attenmixer"] - row["original"]) / row["original"])
    t4 = pd.read_csv(out / "table4_ablations.csv")
    assert set(t4.model) == {"attenmixer", "attenmixer-M"}
    t1 = pd.read_csv(out / "table1_datasets.csv")
    stats = read_json(runs / "main" / "config.json")["dataset"]["stats"]
    assert t1.iloc[0]["clicks"] == stats["clicks"] and t1.iloc[0]["items"] == stats["items"]


def test_sweep_points_are_normal_runs_and_resume(recorded, capsys):
    runs, _ = recorded
    cfg = read_json(runs / "sweep-attenmixer-levels-synthetic_micro-levels2" / "config.json")
    assert cfg["sweep"]["value"] == 2 and cfg["cfg"]["attenmixer"]["levels"] == 2
    # running the same sweep again trains nothing new: every point is finished
    assert main(["sweep", "--model", "attenmixer", "--param", "levels", "--values", "1..2", "--set", "dim=8",
                 "--set", "batch_size=64", "--runs-dir", str(runs)] + COMMON) == 0
    assert "already finished" in capsys.readouterr().out


def test_dissect_records_density_per_group(recorded):
    runs, _ = recorded
    unit = runs / "dis" / "srgnn" / "seed0"
    rows = [json.loads(line) for line in (unit / "density.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and rows[0]["step"] == 0
    groups = set(rows[0]["density"])
    assert {"gnn.propagation", "gnn.gate_ih", "gnn.gate_hh", "readout.query"} <= groups
    for row in rows:
        for g, (kept, total) in row["counts"].items():
            assert row["density"][g] == pytest.approx(kept / total)


def test_report_on_empty_folder_names_what_is_missing(tmp_path):
    (tmp_path / "runs").mkdir()
    assert main(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 0
    assert "Missing runs" in (tmp_path / "r" / "report.md").read_text()


def test_latex_tables_are_latex(recorded):
    _, out = recorded
    tex = (out / "table2_overall.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\*" not in tex
    assert not re.search(r"\*\*\d", tex)  # no Markdown bold; marks are superscripts like $^{**}$
    assert r"$\pm$" in tex  # two seeds: mean ± std


def test_report_takes_runs_dir_like_run(tmp_path, capsys):
    assert main(["report", "--runs-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert f"--runs-dir {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
