"""`sbr-bench report`: Tables 1-4 and Figures 3, 5, 6, 7 (+ timing) rebuilt from recorded runs only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import read_json, write_text
from ..runs import SELECTIONS, selection_caption, selection_of
from . import figures, tables
from .records import load_runs
from .tuning import tuning_sections


def _write_table(out: Path, name: str, tidy: pd.DataFrame, shown: pd.DataFrame, caption: str,
                 shown_tex: pd.DataFrame | None = None) -> str:
    write_text(out / f"{name}.csv", tidy.to_csv(index=False))
    tex = shown if shown_tex is None else shown_tex
    write_text(out / f"{name}.tex", tables.to_latex(tex, caption) if not tex.empty else "% no runs\n")
    return f"## {caption}\n\n{tables.to_markdown(shown)}\n\nFiles: `{name}.csv` (exact numbers), `{name}.tex`.\n"


def build_report(runs_dir="runs", out_dir="reports/latest") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, problems = load_runs(runs_dir)
    parts = [f"# sbr-bench report\n\nBuilt from {len(records)} recorded run(s) under `{runs_dir}` "
             "(no retraining). Metrics are ×100 on the test split, mean ± std over seeds; ties are broken "
             "uniformly at random in expectation. Runs of different selection modes are never put in one table: "
             "each mode has its own section. Marks: \\*\\* p < 0.01, \\* p < 0.05 (Holm-corrected paired t-test "
             "against the best model of the same run); bold = best and significantly better than every other model.\n"]
    parts += published_sections(runs_dir)

    t1 = tables.table1(records)
    parts.append(_write_table(out, "table1_datasets", t1, t1, "Table 1: dataset statistics"))
    modes = [m for m in SELECTIONS if any(selection_of(r.config) == m for r in records if r.kind == "run")]
    for mode in modes:
        chosen = [r for r in records if selection_of(r.config) == mode]
        suffix = f"-{mode}" if len(modes) > 1 else ""
        label = f" ({mode} selection)" if len(modes) > 1 else ""
        parts.append(f"## Selection: {mode}\n\n{selection_caption(mode)}\n")
        notes = sorted({f"{r.run_id}: {note}" for r in chosen for note in r.config.get("settings_notes", [])})
        if notes:  # what a dataset's size made a run apply (epoch caps, Atten-Mixer's d on synthetic data)
            parts.append("Settings the datasets' sizes applied:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        t2 = tables.table2(chosen, mode)
        parts.append(_write_table(out, "table2_overall" + suffix, t2, tables.wide(t2),
                                  f"Table 2{label}: HR@20, MRR@20 and seconds per training epoch (median)",
                                  tables.wide(t2, latex=True)))
        t3 = tables.table3(chosen, mode)
        parts.append(_write_table(out, "table3_with_attenmixer" + suffix, t3, tables.table3_wide(t3),
                                  f"Table 3{label}: encoders with their own readout vs with Atten-Mixer, at equal d "
                                  f"({tables.table3_dims(t3)})"))
        t4 = tables.table4(chosen, mode)
        parts.append(_write_table(out, "table4_ablations" + suffix, t4, tables.wide(t4),
                                  f"Table 4{label}: Atten-Mixer ablations", tables.wide(t4, latex=True)))

    parts += tuning_sections(runs_dir, out)

    made = [
        ("Figure 3", figures.figure3_density(records, out)),
        ("Figure 5", figures.figure_sweep(records, out, "levels", 5)),
        ("Figure 6", figures.figure_sweep(records, out, "heads", 6)),
        ("Figure 7", figures.figure7_lengths(records, out)),
        ("Timing", figures.figure_timing(records, out)),
        ("Intent recovery", figures.figure_intent_recovery(records, out)),
    ]
    missing = tables.expected_missing(records)
    for label, result in made:
        if result is None:
            missing.append(f"{label}: no recorded runs for it (see docs/reproducing.md)")
            continue
        caption, stem = result[0], result[1]
        if len(result) > 2:
            write_text(out / f"{stem}.csv", pd.DataFrame(result[2]).to_csv(index=False))
        parts.append(f"## {label}\n\n![{label}]({stem}.png)\n\n{caption} Also `{stem}.svg`, `{stem}.pdf`.\n")
    if missing or problems:
        parts.append("## Missing runs\n\n" + "\n".join(f"- {m}" for m in missing + problems) + "\n")
    write_text(out / "report.md", "\n".join(parts))
    return out / "report.md"


def published_sections(runs_dir) -> list[str]:
    """The side-by-side tables of every `sbr-bench reproduce` recorded under `runs_dir`."""
    from ..references import load_reference
    from .published import comparison_markdown

    sections = []
    for path in sorted(Path(runs_dir).glob("reproduce-*.json")):
        table = read_json(path)
        ref = load_reference(table["paper"])
        text = comparison_markdown(table, ref, table["dataset"], ref.datasets.get(table["dataset"], {}))
        sections.append("#" + text.replace("\n# ", "\n## "))  # one heading level down
    return sections
