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
    # the same dataset and selection with other settings: a run that must never share main's tables
    assert main(["run", "--models", "pop,srgnn", "--seeds", "1", "--run-id", "other", "--set", "dim=12",
                 "--set", "batch_size=64", "--runs-dir", runs] + COMMON) == 0
    out = root / "report"
    assert main(["report", "--runs", runs, "--out", str(out)]) == 0
    return root / "runs", out


def test_every_figure_is_rendered(recorded):
    _, out = recorded
    for stem in ("figure3_density", "figure5_levels", "figure6_heads", "main/figure7_session_length",
                 "main/timing_phases", "other/timing_phases"):
        for fmt in ("png", "svg", "pdf"):
            assert (out / f"{stem}.{fmt}").stat().st_size > 1000, stem
    text = (out / "report.md").read_text()
    for label in ("Table 1", "Table 2", "Table 3", "Table 4", "Figure 3", "Figure 5", "Figure 6", "Figure 7"):
        assert label in text
    assert "hardware" in text and "seeds [0, 1]" in text
    assert "no finished run of" in text  # models not recorded are named, not a crash


def test_table_numbers_equal_the_run_records(recorded):
    runs, out = recorded
    t2 = pd.read_csv(out / "main" / "table2_overall.csv")
    for model in ("pop", "srgnn", "attenmixer"):
        summaries = [read_json(runs / "main" / model / f"seed{s}" / "summary.json") for s in (0, 1)]
        assert all(s["audit"]["examples"] > 0 for s in summaries)  # the leakage audit ran
        per_seed = [s["test"] for s in summaries]
        for metric in ("HR@20", "MRR@20"):
            row = t2[(t2.model == model) & (t2.metric == metric)].iloc[0]
            values = [p[metric] for p in per_seed]
            assert row["mean"] == pytest.approx(np.mean(values), abs=1e-9)
            assert row["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
    t3 = pd.read_csv(out / "main" / "table3_with_attenmixer.csv")
    row = t3[(t3.encoder == "srgnn") & (t3.metric == "HR@20")].iloc[0]
    assert row["improvement_pct"] == pytest.approx(100 * (row["with_attenmixer"] - row["original"]) / row["original"])
    t4 = pd.read_csv(out / "main" / "table4_ablations.csv")
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
    tex = (out / "main" / "table2_overall.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\*" not in tex
    assert not re.search(r"\*\*\d", tex)  # no Markdown bold; marks are superscripts like $^{**}$
    assert r"$\pm$" in tex  # two seeds: mean ± std


def test_report_takes_runs_dir_like_run(tmp_path, capsys):
    assert main(["report", "--runs-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert f"--runs-dir {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_runs_are_never_mixed_without_a_spec(recorded):
    runs, out = recorded
    text = (out / "report.md").read_text()
    # main and other share dataset and selection but not settings: two headings, each run its own tables
    headings = [line for line in text.splitlines() if line.startswith("## Synthetic:micro, refit selection")]
    assert len(headings) == 2
    for run, models in (("main", {"pop", "srgnn", "attenmixer"}), ("other", {"pop", "srgnn"})):
        t2 = pd.read_csv(out / run / "table2_overall.csv")
        assert set(t2.run) == {run} and set(t2.model) == models
    assert not (out / "table2_overall.csv").exists()


def test_a_spec_puts_runs_in_one_table_and_every_row_names_its_run(recorded, tmp_path):
    runs, _ = recorded
    spec = tmp_path / "report.toml"
    spec.write_text('runs = ["main", "other"]\n\n[[table]]\nkind = "table2"\nruns = ["main", "other"]\n'
                    'label = "both"\n\n[[figure]]\nkind = "timing"\nruns = ["other"]\n')
    out = tmp_path / "r"
    assert main(["report", "--runs-dir", str(runs), "--spec", str(spec), "--out", str(out)]) == 0
    t2 = pd.read_csv(out / "spec" / "both.csv")
    assert set(zip(t2.run, t2.model)) >= {("main", "srgnn"), ("other", "srgnn")}
    text = (out / "report.md").read_text()
    section = text[text.index("## Tables and figures over several runs"):]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert "run" in table[0] and all(("main" in row) or ("other" in row) for row in table[1:])
    assert "\\*" not in "\n".join(table)  # no significance marks over several runs
    assert (out / "spec" / "timing-1" / "timing_phases.png").exists()
    assert not (out / "dis").exists()  # only the runs the spec names


def test_runs_selects_runs_and_names_unknown_ones(recorded, tmp_path, capsys):
    runs, _ = recorded
    out = tmp_path / "r"
    assert main(["report", "--runs-dir", str(runs), "--runs", "other", "--out", str(out)]) == 0
    assert (out / "other" / "table2_overall.csv").exists() and not (out / "main").exists()
    assert main(["report", "--runs", str(runs / "other"), "--out", str(tmp_path / "r2")]) == 0  # a run folder
    assert (tmp_path / "r2" / "other" / "table2_overall.csv").exists()
    assert main(["report", "--runs-dir", str(runs), "--runs", "nope", "--out", str(out)]) == 2
    assert "no recorded run 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ('colour = "blue"\n', "unknown key 'colour'"),
    ('[[table]]\nkind = "table9"\nruns = ["main"]\n', "[[table]] 1: kind must be one of"),
    ('[[table]]\nkind = "table2"\nruns = ["main", "ghost"]\n', "no recorded run 'ghost'"),
    ('[[figure]]\nkind = "timing"\nruns = ["main", "other"]\n', "both have srgnn"),
    ("runs = [\n", "not TOML"),
])
def test_a_bad_spec_is_one_clear_line(recorded, tmp_path, capsys, text, message):
    runs, _ = recorded
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    assert main(["report", "--runs-dir", str(runs), "--spec", str(spec), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list((tmp_path / "r").glob("**/*.csv"))  # the spec is checked before anything is written


def test_the_html_report_is_self_contained(recorded):
    _, out = recorded
    page = (out / "report.html").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (out / "report.md").read_text())
    assert len(images) >= 6 and page.count('src="data:image/png;base64,') == len(images)
    assert not re.search(r'src="(?!data:)', page) and "<script" not in page  # nothing fetched, nothing run
    assert "<table>" in page and "<h1>" in page


def test_the_html_report_renders_every_figure_in_headless_chromium(recorded, tmp_path):
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs headless Chromium (Debian package chromium), which this machine lacks")
    _, out = recorded
    # The check runs in the page, after load: how many images decoded (naturalWidth > 0) out of how many.
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.loaded="
             "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})</script></body>")
    page = tmp_path / "report.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe))
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[-500:]
    assert loaded[1] == loaded[2] and int(loaded[2]) >= 6


def rendered(markdown, folder):
    """The HTML of `markdown`, failing (not hanging) if the renderer loops."""
    import signal

    from sbr_bench.report.html import render

    def stop(*_):
        raise TimeoutError("the HTML renderer did not finish")

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    try:
        return render(markdown, folder)
    finally:
        signal.alarm(0)


def test_the_html_renderer_takes_every_construct_the_report_writes(tmp_path):
    import base64

    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    (tmp_path / "a b").mkdir()
    (tmp_path / "a b" / "f.png").write_bytes(png)
    (tmp_path / "g.png").write_bytes(png)
    page = rendered("# T\n\n## Table 2\n\n| model | HR |\n|---|---|\n| **A** | 1.0\\*\\* |\n\n- one\n  two\n- three\n\n"
                    "![x](g.png) ![y](g.png)\n\n![Fig \\[1\\]](a%20b/f.png)\n\n![broken](missing.png\n\n#\n\n"
                    "text `_id_ **x**` and _it_ and <u>u</u>\n", tmp_path)
    assert page.count("data:image/png;base64,") == 3 and "<ul><li>one two</li><li>three</li></ul>" in page
    assert "<td><strong>A</strong></td><td>1.0**</td>" in page and "<code>_id_ **x**</code>" in page
    assert "<em>it</em>" in page and "<u>u</u>" in page and 'alt="Fig [1]"' in page
    assert "![broken](missing.png" in page  # not an image line: shown as text


@pytest.mark.parametrize("hostile", [
    '[x](https://a"onmouseover="alert(1)")', "<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
    "`<b>` and ![a\"b](x.png)", "[x](javascript:alert(1))",
])
def test_recorded_text_never_becomes_html(tmp_path, hostile):
    page = rendered(f"## {hostile}\n\n| {hostile} |\n|---|\n| {hostile} |\n\n- {hostile}\n\n{hostile}\n", tmp_path)
    body = page[page.index("<body>"):]
    assert "<script" not in body and "<b>" not in body and 'href="javascript' not in body
    assert not re.search(r"<[a-z]+\b[^>]*\son\w+\s*=", body)  # no element with an event attribute
