"""`sbr-bench report`: Tables 1-4 and Figures 3, 5, 6, 7 (+ timing) rebuilt from recorded runs only.

Runs are never mixed silently: every run gets its own tables and figures (in `<out>/<run-id>/`), under a
heading for its dataset, selection mode and settings; only a report spec (`spec.ReportSpec`) puts rows of
several runs in one table, and then every row names its run. Significance marks come from the test inside
one run, so a table over several runs prints none.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from ..errors import UserError
from ..io import read_json, write_text
from ..runs import config_hash, selection_caption, selection_of
from . import figures, tables
from .html import write_html
from .names import dataset_name, model_name
from .records import load_runs
from .spec import FIGURE_KINDS, ReportSpec
from .tuning import tune_folders, tuning_sections

TABLES = {  # kind -> (file stem, caption, tidy rows, shown table, its LaTeX cells where they are not plain text)
    "table2": ("table2_overall", "Table 2: HR@20, MRR@20 (mean ± std over seeds) and seconds per training epoch "
               "(median ± interquartile range over epochs)",
               tables.table2, tables.wide, lambda tidy: tables.wide(tidy, latex=True)),
    "table3": ("table3_with_attenmixer", "Table 3: encoders with their own readout vs with Atten-Mixer, at equal d",
               tables.table3, tables.table3_wide, None),
    "table4": ("table4_ablations", "Table 4: Atten-Mixer ablations", tables.table4, tables.wide,
               lambda tidy: tables.wide(tidy, latex=True)),
}
PER_RUN_FIGURES = (("Figure 7", figures.figure7_lengths), ("Timing", figures.figure_timing),
                   ("Intent recovery", figures.figure_intent_recovery))
# Settings that tell runs of one dataset and selection mode apart, in a run's config.
RUN_SPECIFIC = ("command", "log", "models", "seeds", "checkpoint_every", "settings_notes", "device", "distributed")


def settings_key(rec) -> str:
    """A short fingerprint of what a run trained with (its config without run-specific entries such as
    its model list, seeds and command line), and of each model's parameters."""
    return config_hash({k: v for k, v in rec.config.items() if k not in RUN_SPECIFIC})


def select(records, wanted, where: str = "--runs") -> list:
    """The records of the runs named in `wanted` (run ids), in that order, each once; an unknown id is an
    error naming `where` it was asked for."""
    by_id = {r.run_id: r for r in records}
    missing = [w for w in wanted if w not in by_id]
    if missing:
        raise UserError(f"{where}: no recorded run '{missing[0]}' among those reported "
                        f"({', '.join(by_id) or 'none'})")
    return [by_id[w] for w in dict.fromkeys(wanted)]


def _write_table(out: Path, rel: str, tidy: pd.DataFrame, shown: pd.DataFrame, caption: str, note: str = "",
                 heading: str = "##", shown_tex: pd.DataFrame | None = None) -> str:
    """`<rel>.csv` (exact numbers) and `<rel>.tex` (the note ends its caption; `shown_tex` where the LaTeX
    cells differ from `shown`), and the Markdown section."""
    label = rel.replace("/", "-")
    shown_tex = shown if shown_tex is None else shown_tex
    write_text(out / f"{rel}.csv", tidy.to_csv(index=False))
    write_text(out / f"{rel}.tex", tables.to_latex(shown_tex, f"{caption}. {note}" if note else caption, label))
    return (f"{heading} {caption}\n\n{tables.to_markdown(shown)}\n\n{note + ' ' if note else ''}"
            f"Files: `{rel}.csv` (exact numbers), `{rel}.tex`.\n")


def _table(out: Path, kind: str, recs, rel: str, caption: str = "", heading: str = "###",
           skip_empty: bool = False) -> str | None:
    stem, default_caption, tidy_of, shown_of, tex_of = TABLES[kind]
    tidy = tidy_of(recs, selection_of(recs[0].config))
    if tidy.empty and skip_empty:
        return None
    caption = caption or default_caption
    if kind == "table3" and not tidy.empty:
        caption += f" ({tables.table3_dims(tidy)})"
    note = tables.marks_note(tidy) if kind != "table3" else ""
    return _write_table(out, rel or stem, tidy, shown_of(tidy), caption, note, heading,
                        tex_of(tidy) if tex_of else None)


def _figure(out: Path, label: str, result, rel_dir: str = "", heading: str = "###") -> str | None:
    if result is None:
        return None
    caption, stem = result[0], result[1]
    if len(result) > 2:
        write_text(out / rel_dir / f"{stem}.csv", pd.DataFrame(result[2]).to_csv(index=False))
    path = f"{rel_dir}/{stem}" if rel_dir else stem
    caption = caption.replace(f"`{stem}_column.", f"`{path}_column.")
    alt = re.sub(r"([\[\]\\])", r"\\\1", label)
    return f"{heading} {label}\n\n![{alt}]({quote(path)}.png)\n\n{caption} Also `{path}.svg`, `{path}.pdf`.\n"


def _run_section(out: Path, rec) -> list[str]:
    """Tables 2-4 and the per-run figures of one run, in `<out>/<run-id>/`."""
    folder = out / rec.run_id
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"### Run `{rec.run_id}`\n\nModels {', '.join(model_name(m) for m in rec.config.get('models', []))}; "
             f"seeds {rec.config.get('seeds', [])}; `{rec.config.get('command', '')}`.\n"]
    broken = [f"- {model_name(m)}: {e['status']}; " + "; ".join(f"seed {s}: {why}" for s, why in e["failed"].items())
              for m, e in rec.results["models"].items() if e["status"] != "ok" and e.get("failed")]
    if broken:  # failed models are not in the tables: say so here
        parts.append("Models that did not finish every seed (failed seeds are left out of the tables):\n\n"
                     + "\n".join(broken) + "\n")
    notes = rec.config.get("settings_notes", [])
    if notes:  # what a dataset's size made the run apply (epoch caps, Atten-Mixer's d on synthetic data)
        parts.append("Settings the dataset's size applied:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    for kind, (stem, *_rest) in TABLES.items():  # Tables 3 and 4 only where the run has their models
        section = _table(out, kind, [rec], f"{rec.run_id}/{stem}", heading="####", skip_empty=kind != "table2")
        if section:
            parts.append(section)
    for label, make in PER_RUN_FIGURES:
        section = _figure(out, label, make([rec], folder), rec.run_id, heading="####")
        if section:
            parts.append(section)
    return parts


def _spec_sections(out: Path, spec_parts: list) -> list[str]:
    """The spec's tables and figures, `spec_parts` its (entry, records) pairs, checked already."""
    parts = ["## Tables and figures over several runs (report spec)\n\nEvery row names its run; no significance "
             "marks (each run's test compares its own models only).\n"] if spec_parts else []
    tables_ = [(part, recs) for part, recs in spec_parts if part.kind not in FIGURE_KINDS]
    figures_ = [(part, recs) for part, recs in spec_parts if part.kind in FIGURE_KINDS]
    for i, (part, recs) in enumerate(tables_):
        rel = f"spec/{part.label or f'{part.kind}-{i + 1}'}"
        parts.append(_table(out, part.kind, recs, rel, part.caption, heading="###"))
    for i, (part, recs) in enumerate(figures_):
        folder = f"spec/{part.label or f'{part.kind}-{i + 1}'}"
        (out / folder).mkdir(parents=True, exist_ok=True)
        make = figures.figure7_lengths if part.kind == "figure7" else figures.figure_timing
        parts.append(_figure(out, part.caption or part.kind, make(recs, out / folder), folder)
                     or f"### {part.kind}\n\n_no recorded data for it in runs {', '.join(part.runs)}_\n")
    return parts


def _check_one_mode(part, recs) -> None:
    modes = {selection_of(r.config) for r in recs}
    if len(modes) > 1:
        raise UserError(f"report spec: {part.kind} over runs {', '.join(part.runs)} mixes selection modes "
                        f"({', '.join(sorted(modes))}); one table or figure holds one mode")


def _check_one_run_per_model(part, recs) -> None:
    """A figure draws each (dataset, model) once: two runs may not both bring a model it draws."""
    drawn = figures.FIG7_MODELS if part.kind == "figure7" else None
    seen = {}
    for rec in recs:
        timed = {m for m, e in rec.results["models"].items() if "epoch_median_s" in e.get("timing", {})}
        for model in [m for m in rec.ok_models() if m in (drawn if drawn is not None else timed)]:
            key = (rec.dataset, model)
            if key in seen:
                raise UserError(f"report spec: {part.kind} over runs {', '.join(part.runs)}: runs '{seen[key]}' and "
                                f"'{rec.run_id}' both have {model} on {rec.dataset}; a figure takes each from one run")
            seen[key] = rec.run_id


def build_report(runs_dir="runs", out_dir="reports/latest", runs=None, spec=None) -> Path:
    """Write report.md, report.html and every table and figure file into `out_dir`.

    Args:
        runs_dir: the folder of recorded runs.
        runs: run ids to report (default: the spec's, else every run in `runs_dir`).
        spec: a `ReportSpec` or the path of its TOML file (tables and figures over several runs).
    Returns:
        The path of report.md.
    Raises:
        UserError: an unknown run id, or a bad spec (named with its file and entry).
    """
    if spec is not None and not isinstance(spec, ReportSpec):
        spec = ReportSpec.from_toml(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, problems = load_runs(runs_dir)
    wanted = runs or (spec.runs if spec else None)
    if wanted:  # tune folders are named like runs but reported by their own section
        tune_ids = {p.name for p in tune_folders(runs_dir)}
        records = select(records, [w for w in wanted if w not in tune_ids])
    spec_parts = []  # checked before anything is written
    for part in (spec.tables + spec.figures) if spec is not None else ():
        recs = select(records, part.runs, f"report spec: {part.kind} ({part.label or 'no label'})")
        _check_one_mode(part, recs)
        if part.kind in FIGURE_KINDS:
            _check_one_run_per_model(part, recs)
        spec_parts.append((part, recs))
    plain = [r for r in records if r.kind == "run" and not r.sweep]
    parts = [f"# sbr-bench report\n\nBuilt from {len(records)} recorded run(s) under `{runs_dir}` (no retraining). "
             "Metrics are ×100 on the test split, mean ± std over seeds; ties are broken uniformly at random in "
             "expectation. Each run has its own tables and figures (files in a folder named after it); runs of "
             "different datasets, selection modes or settings are never put in one table, and only a report spec "
             "puts several runs in one. What the marks in a table mean (or why it has none) is in its caption.\n"]
    parts += published_sections(runs_dir) if not wanted else []  # a selection names runs, not reproductions

    t1 = tables.table1(records)
    parts.append(_write_table(out, "table1_datasets", t1, tables.table1_wide(t1), "Table 1: dataset statistics"))
    groups: dict = {}
    for rec in plain:
        groups.setdefault((rec.dataset, selection_of(rec.config), settings_key(rec)), []).append(rec)
    for (dataset, mode, key), recs in groups.items():
        parts.append(f"## {dataset_name(dataset)}, {mode} selection, settings {key}\n\n{selection_caption(mode)} "
                     f"Runs: {', '.join(f'`{r.run_id}`' for r in recs)}.\n")
        for rec in recs:
            parts += _run_section(out, rec)
    parts += _spec_sections(out, spec_parts)

    parts += tuning_sections(runs_dir, out, only=wanted)
    missing = tables.expected_missing(records)
    shared = [("Figure 3", figures.figure3_density(records, out)),
              ("Figure 5", figures.figure_sweep(records, out, "levels", 5)),
              ("Figure 6", figures.figure_sweep(records, out, "heads", 6))]
    if any(result for _, result in shared):
        parts.append("## Figures 3, 5 and 6\n")
    for label, result in shared:
        section = _figure(out, label, result)
        if section is None:
            missing.append(f"{label}: no recorded runs for it (see docs/reproducing.md)")
        else:
            parts.append(section)
    if missing or problems:
        parts.append("## Missing runs\n\n" + "\n".join(f"- {m}" for m in missing + problems) + "\n")
    write_text(out / "report.md", "\n".join(parts))
    write_html(out / "report.md")
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
