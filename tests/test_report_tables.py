"""The tables as shown: Table 1's orientation, marks only where a test backs them, and LaTeX a paper can include."""

import re
import shutil
import subprocess
from types import SimpleNamespace

import pandas as pd
import pytest

from sbr_bench.cli import main
from sbr_bench.report import tables
from sbr_bench.report.records import load_runs

SMALL = ["--dataset", "synthetic:micro", "--epochs", "1", "--no-progress", "--set", "dim=8", "--set", "batch_size=64"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Two runs on one dataset: three models with 3 seeds, then two of them again with 1 seed."""
    runs = tmp_path_factory.mktemp("tables") / "runs"
    common = SMALL + ["--runs-dir", str(runs)]
    assert main(["run", "--models", "pop,srgnn,attenmixer", "--seeds", "3", "--run-id", "a-three"] + common) == 0
    assert main(["run", "--models", "pop,attenmixer", "--seeds", "1", "--run-id", "b_one"] + common) == 0
    loaded, problems = load_runs(runs)
    assert not problems and [r.run_id for r in loaded] == ["a-three", "b_one"]
    return loaded


def by_id(records, run_id):
    return [r for r in records if r.run_id == run_id]


def test_table1_puts_statistics_in_rows_and_formats_them(records):
    t1 = tables.table1(records)
    assert len(t1) == 1 and t1.iloc[0]["run"] == "b_one"  # both runs saw the same data: one column
    shown = tables.table1_wide(t1)
    assert list(shown.columns) == ["statistic", "Synthetic:micro"]
    assert list(shown["statistic"][:5]) == ["clicks", "sessions", "items", "average length",
                                             "whole sessions (before augmentation)"]
    stats = records[0].config["dataset"]["stats"]
    cell = dict(zip(shown["statistic"], shown["Synthetic:micro"]))
    assert cell["clicks"] == f"{stats['clicks']:,}" and "," in cell["clicks"]  # 1,607
    assert re.fullmatch(r"\d+\.\d\d", cell["average length"])


def fake_run(run_id, dataset, **stats):
    return SimpleNamespace(run_id=run_id, dataset=dataset, kind="run", config={"dataset": {"stats": stats}})


def test_table1_gives_disagreeing_runs_their_own_columns():
    big = dict(clicks=982961, sessions=719470, items=43097, avg_length=4.998333333333333, whole_sessions=204771)
    runs = [fake_run("r1", "diginetica", **big), fake_run("r2", "diginetica", **dict(big, items=43098)),
            fake_run("r3", "lastfm", **big), fake_run("r4", "lastfm", **big)]
    shown = tables.table1_wide(tables.table1(runs))
    assert list(shown.columns) == ["statistic", "Diginetica (r1)", "Diginetica (r2)", "Last.fm"]
    cell = dict(zip(shown["statistic"], shown["Last.fm"]))
    assert cell["clicks"] == "982,961" and cell["average length"] == "5.00" and cell["train examples (prefixes)"] == "–"


def test_marks_only_with_three_seeds_in_one_run(records):
    t2 = tables.table2(by_id(records, "a-three"), "refit")
    marked = t2[t2["mark"] != ""]
    assert not marked.empty  # POP beats the 1-epoch networks on micro data: their rows carry marks
    shown = tables.wide(t2)
    srgnn = shown[shown["model"] == "SR-GNN"].iloc[0]
    assert srgnn["Synthetic:micro HR@20"].endswith(r"\*" * len(marked.iloc[0]["mark"]))
    assert tables.marks_note(t2).startswith("Marks: ** p < 0.01, * p < 0.05 (Holm-corrected")
    assert "not in this table" not in tables.marks_note(t2)
    t4 = tables.table4(by_id(records, "a-three"), "refit")  # Atten-Mixer alone, marked against POP
    assert tables.wide(t4).iloc[0, 1].startswith("<u>") and tables.wide(t4).iloc[0, 1].endswith(r"</u>\*\*")
    assert "best model, which is not in this table" in tables.marks_note(t4)

    one = tables.table2(by_id(records, "b_one"), "refit")
    assert (one["mark"] != "").any()  # recorded, but not printed: one seed
    text = tables.to_markdown(tables.wide(one)) + tables.to_latex(tables.wide(one, latex=True), "Table 2: x")
    assert r"\*" not in text and "$^" not in text and "**" not in text and r"\textbf" not in text
    assert tables.marks_note(one).startswith("No significance marks: fewer than 3 seeds (n = 1)")


def test_merged_runs_name_each_rows_run_and_print_no_marks(records):
    t2 = tables.table2(records, "refit")
    shown = tables.wide(t2)
    assert list(shown.columns[:2]) == ["model", "run"]
    assert list(zip(shown["model"], shown["run"])) == [("POP", "a-three"), ("POP", "b_one"), ("SR-GNN", "a-three"),
                                                       ("Atten-Mixer", "a-three"), ("Atten-Mixer", "b_one")]
    assert not any(r"\*" in str(v) for v in shown.to_numpy().ravel())
    assert "rows from several runs" in tables.marks_note(t2)
    tex = tables.to_latex(tables.wide(t2, latex=True), "Table 2: merged", "table2")
    assert r"b\_one" in tex and "$^" not in tex


def metric_rows(seeds, significant):
    """Two models of one run: Atten-Mixer best on HR@20 (significantly where `significant`), SR-GNN on MRR@20."""
    row = dict(dataset="diginetica", selection="valid", std=0.1, seeds=seeds, run="r", dim=8)
    return pd.DataFrame([
        dict(row, model="srgnn", metric="HR@20", mean=50.0, mark="**", best=False, best_significant=significant),
        dict(row, model="srgnn", metric="MRR@20", mean=18.0, mark="", best=True, best_significant=False),
        dict(row, model="attenmixer", metric="HR@20", mean=52.0, mark="", best=True, best_significant=significant),
        dict(row, model="attenmixer", metric="MRR@20", mean=17.0, mark="*", best=False, best_significant=False),
    ])


def test_best_is_underlined_and_bold_only_when_significantly_best():
    shown = tables.wide(metric_rows(3, True)).set_index("model")
    assert shown.loc["Atten-Mixer", "Diginetica HR@20"] == "<u>**52.00 ± 0.10**</u>"
    assert shown.loc["SR-GNN", "Diginetica MRR@20"] == "<u>18.00 ± 0.10</u>"  # best, not significantly
    assert shown.loc["SR-GNN", "Diginetica HR@20"] == r"50.00 ± 0.10\*\*"
    tex = tables.wide(metric_rows(3, True), latex=True).set_index("model")
    assert tex.loc["Atten-Mixer", "Diginetica HR@20"] == r"\underline{\textbf{52.00 $\pm$ 0.10}}"
    assert tex.loc["Atten-Mixer", "Diginetica MRR@20"] == r"17.00 $\pm$ 0.10$^{*}$"
    few = tables.wide(metric_rows(2, True)).set_index("model")  # bold is a significance claim: not with 2 seeds
    assert few.loc["Atten-Mixer", "Diginetica HR@20"] == "<u>52.00 ± 0.10</u>"
    assert few.loc["SR-GNN", "Diginetica HR@20"] == "50.00 ± 0.10"
    assert "n = 2" in tables.marks_note(metric_rows(2, True))


def check_latex(tex, caption, label, columns, rules=("\\toprule", "\\midrule", "\\bottomrule")):
    """The structure a paper's \\input needs."""
    assert tex.startswith("% requires \\usepackage{booktabs}\n")
    assert "\\begin{table}" in tex and tex.rstrip().endswith("\\end{table}")
    assert f"\\caption{{{caption}}}" in tex and not re.search(r"\\caption\{Table \d", tex)
    assert f"\\label{{tab:{label}}}" in tex
    assert all(rule in tex for rule in rules)
    assert f"\\begin{{tabular}}{{{columns}}}" in tex
    unescaped = re.sub(r"\\[{}]", "", tex)
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert tex.isascii()


def test_latex_tables_are_includable(records):
    t2 = tables.table2(by_id(records, "a-three"), "refit")
    tex = tables.to_latex(tables.wide(t2, latex=True), "Table 2 (refit selection): HR@20 & MRR@20 in %",
                          "table2_overall")
    check_latex(tex, r"HR@20 \& MRR@20 in \% (refit selection)", "table2_overall", "lrrr")
    assert "\\underline{\\textbf{" in tex and "$^{**}$" in tex and "$\\pm$" in tex

    t1 = tables.table1(records)
    check_latex(tables.to_latex(tables.table1_wide(t1), "Table 1: dataset statistics", "table1"),
                "dataset statistics", "table1", "lr")
    plain = pd.DataFrame({"model": ["srgnn_x #1"], "note": ["{σ} ± – × $"], "gain": ["+1.5%"]})
    tex = tables.to_latex(plain, "Table 3: a_b", "t3")
    check_latex(tex, r"a\_b", "t3", "llr")
    assert r"srgnn\_x \#1 & \{$\sigma$\} $\pm$ -- $\times$ \$ & +1.5\% \\" in tex


def test_empty_table_is_a_valid_table_saying_so():
    tex = tables.to_latex(pd.DataFrame(), "Table 4: ablations", "table4_ablations")
    check_latex(tex, "ablations", "table4_ablations", "l", rules=("\\toprule", "\\bottomrule"))  # no header
    assert "no recorded runs" in tex and "% no runs" not in tex
    assert tex == tables.empty_latex("Table 4: ablations", "table4_ablations")
    assert tables.marks_note(pd.DataFrame()) == ""


def test_latex_compiles(records, tmp_path):
    engine = shutil.which("pdflatex") or shutil.which("tectonic")
    if engine is None:
        pytest.skip("no TeX engine (pdflatex or tectonic) on PATH; the structural checks above still ran")
    t2 = tables.table2(records, "refit")
    body = "\n".join([tables.to_latex(tables.wide(t2, latex=True), "Table 2: " + tables.marks_note(t2), "t2"),
                      tables.to_latex(tables.table1_wide(tables.table1(records)), "Table 1: stats", "t1"),
                      tables.empty_latex("Table 4: ablations", "t4")])
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body + "\\end{document}\n")
    command = [engine, "-interaction=nonstopmode", "-halt-on-error", doc.name] if engine.endswith("pdflatex") \
        else [engine, doc.name]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "doc.pdf").exists()
