"""Tables 1-4 of the paper from recorded runs: tidy DataFrames (CSV, internal names) and the tables as shown
(display names, formatted cells) in Markdown or LaTeX."""

from __future__ import annotations

import math
import re
import unicodedata

import pandas as pd

from ..models.registry import TABLE2_ORDER, TABLE3, is_ablation
from ..runs import HEADLINE, format_cell, headline_header
from .names import dataset_name, model_name
from .records import finished_models, latest_with, runs_with, table2_order

TABLE3_ENCODERS = ("srgnn", "sgnnhn", "gcsan", "dhcn")  # LESSR's wide states do not compose
ABLATIONS = ("attenmixer", "attenmixer-M", "attenmixer-IP", "attenmixer-LI", "attenmixer-LP")
ROW_ORDER = list(dict.fromkeys(TABLE2_ORDER + list(ABLATIONS)))  # the paper's order of rows in Tables 2 and 4
TIME = "s/epoch"
# The tests compare per-example values averaged over seeds, blind to seed-to-seed spread: with fewer seeds a
# mark would claim more than the run shows.
MIN_SEEDS_FOR_MARKS = 3

# Table 1's rows: (key in the recorded dataset stats, label as shown).
STATISTICS = (
    ("clicks", "clicks"),
    ("sessions", "sessions"),
    ("items", "items"),
    ("avg_length", "average length"),
    ("whole_sessions", "whole sessions (before augmentation)"),
    ("train_examples", "train examples (prefixes)"),
    ("valid_examples", "validation examples"),
    ("test_examples", "test examples"),
)


def datasets_of(records) -> list[str]:
    return list(dict.fromkeys(r.dataset for r in records if r.kind == "run"))


def table1(records) -> pd.DataFrame:
    """Dataset statistics: a row per dataset, or per set of statistics where runs of one dataset disagree
    (different protocols); `run` is the newest run with those statistics."""
    rows = []
    for ds in datasets_of(records):
        groups = {}  # statistics -> newest run with them, in order of first appearance
        for rec in (r for r in records if r.dataset == ds and r.kind == "run"):
            s = rec.config.get("dataset", {}).get("stats", {})
            groups[tuple(s.get(key) for key, _ in STATISTICS)] = rec.run_id
        known = {k: v for k, v in groups.items() if any(x is not None for x in k)}
        for values, run in (known or groups).items():  # a run recorded without stats adds no column of dashes
            rows.append(dict(zip((key for key, _ in STATISTICS), values), dataset=ds, run=run))
    columns = ["dataset"] + [key for key, _ in STATISTICS] + ["run"]
    return pd.DataFrame(rows, columns=columns)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _statistic(value, key: str) -> str:
    if _missing(value):
        return "–"
    return f"{value:.2f}" if key == "avg_length" else f"{int(value):,}"


def table1_wide(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as the paper prints it: a row per statistic, a column per dataset (per dataset and run where
    its runs disagree on the statistics)."""
    if df.empty:
        return df
    repeated = df["dataset"].value_counts()
    out = {"statistic": [label for _, label in STATISTICS]}
    for row in df.to_dict("records"):
        head = dataset_name(row["dataset"]) + (f" ({row['run']})" if repeated[row["dataset"]] > 1 else "")
        out[head] = [_statistic(row.get(key), key) for key, _ in STATISTICS]
    return pd.DataFrame(out)  # plain text: to_latex escapes it


def _metric_rows(pairs, dataset, extra=None, mode="valid"):
    """Rows per (model, run) and metric; under `literature` the metric names say best-on-test."""
    rows = []
    for model, rec in pairs:
        entry = rec.results["models"][model]
        best = rec.results.get("best", {})
        for metric, shown in zip(HEADLINE, headline_header(mode)):
            stat = entry["test"].get(metric)
            if stat is None:
                continue
            sig = entry.get("significance", {}).get(metric, {})
            rows.append(dict(extra or {}, dataset=dataset, selection=mode, model=model, metric=shown, mean=stat["mean"],
                             std=stat["std"], seeds=stat["n"], mark=sig.get("mark", ""),
                             best=best.get(metric, {}).get("model") == model,
                             best_significant=best.get(metric, {}).get("significant", False),
                             run=rec.run_id, dim=rec.config.get("cfg", {}).get(model, {}).get("dim"),
                             seed_set=",".join(str(x) for x in sorted(entry.get("seeds_ok", [])))))
        timing = entry.get("timing", {})
        if "epoch_median_s" in timing:
            rows.append(dict(extra or {}, dataset=dataset, selection=mode, model=model, metric=TIME,
                             mean=timing["epoch_median_s"], std=timing.get("epoch_iqr_s", 0.0),
                             seeds=len(entry["seeds_ok"]), mark="", best=False, best_significant=False,
                             run=rec.run_id))
    return rows


def _every_run(records, dataset, models) -> list:
    return [(m, rec) for m in models for rec in runs_with(records, dataset, m)]


def table2(records, mode="valid") -> pd.DataFrame:
    """Accuracy (HR@20, MRR@20: mean, std over seeds, significance mark vs the run's best) and median
    seconds per training epoch (std column = IQR), per dataset, model and run."""
    rows = []
    for ds in datasets_of(records):
        order = [m for m in table2_order(finished_models(records, ds))
                 if m in TABLE2_ORDER or ("+" not in m and not is_ablation(m))]
        rows += _metric_rows(_every_run(records, ds, order), ds, mode=mode)
    return pd.DataFrame(rows)


def table3(records, mode="valid") -> pd.DataFrame:
    """Each encoder with its own readout vs with Atten-Mixer (the newest run of each side); improvement in %
    of the former, and the embedding size d of each side (the paper compares at equal d)."""
    rows = []
    for ds in datasets_of(records):
        for enc in TABLE3_ENCODERS:
            pair = {}
            for variant, name in (("original", enc), ("w/ Atten-Mixer", f"{enc}+attenmixer")):
                rec = latest_with(records, ds, name)
                for r in _metric_rows([(name, rec)] if rec else [], ds, mode=mode):
                    if r["metric"] != TIME:
                        pair[(variant, r["metric"])] = r
            for metric in headline_header(mode):
                a, b = pair.get(("original", metric)), pair.get(("w/ Atten-Mixer", metric))
                if a and b:
                    gain = 100.0 * (b["mean"] - a["mean"]) / a["mean"] if a["mean"] else float("nan")
                    rows.append({"dataset": ds, "encoder": enc, "metric": metric, "original": a["mean"],
                                 "original_std": a["std"], "with_attenmixer": b["mean"],
                                 "with_attenmixer_std": b["std"], "improvement_pct": gain,
                                 "dim_original": a["dim"], "dim_with_attenmixer": b["dim"],
                                 "runs": ",".join(sorted({a["run"], b["run"]}))})
    return pd.DataFrame(rows)


def table3_dims(df: pd.DataFrame) -> str:
    """'d = 256', or where the two sides differ, which d each had (the comparison is then not the paper's)."""
    if df.empty:
        return "no runs"
    pairs = sorted({(a, b) for a, b in zip(df["dim_original"], df["dim_with_attenmixer"])}, key=str)
    if all(a == b for a, b in pairs):
        return "d = " + ", ".join(str(a) for a, _ in pairs)
    return "UNEQUAL d: " + ", ".join(f"{a} without vs {b} with" for a, b in pairs)


def table4(records, mode="valid") -> pd.DataFrame:
    """Atten-Mixer and its ablations (-M, -IP, -LI, -LP), per dataset, model and run."""
    rows = []
    for ds in datasets_of(records):
        rows += [r for r in _metric_rows(_every_run(records, ds, ABLATIONS), ds, mode=mode) if r["metric"] != TIME]
    return pd.DataFrame(rows)


def expected_missing(records) -> list[str]:
    """Runs a full report needs but that are not recorded (named in the report instead of crashing)."""
    missing = []
    for ds in datasets_of(records) or ["(any dataset)"]:
        have = finished_models(records, ds)
        for group, names in (("Table 2", TABLE2_ORDER), ("Table 3", TABLE3),
                             ("Table 4", ABLATIONS)):
            lacking = [n for n in names if n not in have]
            if lacking:
                missing.append(f"{group}, {dataset_name(ds)}: no finished run of {', '.join(lacking)}")
    return missing


def _accuracy(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["metric"] != TIME]


def several_runs(df: pd.DataFrame) -> bool:
    """Whether the rows come from more than one run (then every row names its run)."""
    acc = _accuracy(df)
    return not acc.empty and acc["run"].nunique() > 1


def _fewest_seeds(df: pd.DataFrame) -> int:
    acc = _accuracy(df)
    return int(acc["seeds"].min()) if not acc.empty else 0


def _different_seeds(df: pd.DataFrame) -> bool:
    """Whether the models finished different sets of seeds (a test over per-example values averaged over
    seeds then compares unlike averages)."""
    acc = _accuracy(df)
    return "seed_set" in acc and acc["seed_set"].nunique() > 1


def marks_shown(df: pd.DataFrame) -> bool:
    """Significance marks (and bold) are printed only within one run, with enough seeds, the same for all."""
    return (not df.empty and not several_runs(df) and _fewest_seeds(df) >= MIN_SEEDS_FOR_MARKS
            and not _different_seeds(df))


def marks_note(df: pd.DataFrame) -> str:
    """One sentence for a Table 2/4 caption: what its marks mean, or why it has none."""
    if df.empty:
        return ""
    reasons = []
    if several_runs(df):
        reasons.append("rows from several runs (marks compare models within one run only)")
    if _fewest_seeds(df) < MIN_SEEDS_FOR_MARKS:
        reasons.append(f"fewer than {MIN_SEEDS_FOR_MARKS} seeds (n = {_fewest_seeds(df)})")
    if _different_seeds(df):
        reasons.append("the models finished different seeds")
    if reasons:
        return f"No significance marks: {'; '.join(reasons)}. Underlined: best in its column."
    acc = _accuracy(df)
    absent = not acc.groupby(["dataset", "metric"])["best"].any().all()  # e.g. Table 4 of a run with baselines
    return ("Marks: ** p < 0.01, * p < 0.05 (Holm-corrected paired t-test against the run's best model"
            + (", which is not in this table" if absent else "") + "); underlined: best in its column; "
            "bold: best and significantly better (p < 0.01) than every other model.")


def _underline(text: str, latex: bool) -> str:
    return rf"\underline{{{text}}}" if latex else f"<u>{text}</u>"


def _row_rank(model: str, first_seen: dict) -> tuple:
    return (ROW_ORDER.index(model), 0) if model in ROW_ORDER else (len(ROW_ORDER), first_seen[model])


def wide(df: pd.DataFrame, row_key="model", latex=False) -> pd.DataFrame:
    """Long metric rows -> the table as shown: a row per model (per model and run when a dataset's rows come
    from several runs), a column per (dataset, metric); the best of each accuracy column underlined; marks and
    bold only where `marks_shown`."""
    if df.empty:
        return df
    style, marks = ("latex" if latex else "markdown"), marks_shown(df)
    keys = [row_key, "run"] if several_runs(df) else [row_key]
    top = _accuracy(df).groupby(["dataset", "metric"])["mean"].max().to_dict()
    cells, columns = {}, []
    for r in df.to_dict("records"):
        column, key = (r["dataset"], r["metric"]), tuple(r[k] for k in keys)
        mark = r["mark"] if marks and isinstance(r["mark"], str) else ""
        bold = marks and bool(r["best"] and r["best_significant"])
        text = format_cell(r["mean"], r["std"], r["seeds"], "", bold, style)
        suffix = format_cell(r["mean"], r["std"], r["seeds"], mark, bold, style)[len(text):]  # the mark, styled
        if r["metric"] != TIME and r["mean"] == top[column]:
            text = _underline(text, latex)  # the number, not its mark
        text += suffix
        cells.setdefault(key, {}).setdefault(column, text)
        if column not in columns:
            columns.append(column)
    datasets = list(dict.fromkeys(d for d, _ in columns))
    columns.sort(key=lambda c: (datasets.index(c[0]), c[1] == TIME))  # stable: HR, MRR as recorded, then time
    first_seen = {k[0]: i for i, k in reversed(list(enumerate(cells)))}
    runs = list(dict.fromkeys(df["run"]))
    order = sorted(cells, key=lambda k: (_row_rank(k[0], first_seen), runs.index(k[1]) if len(k) > 1 else 0))
    text_cell = tex_text if latex else str
    rows = [[text_cell(model_name(k[0]) if row_key == "model" else k[0])] + [text_cell(x) for x in k[1:]]
            + [cells[k].get(c, "--" if latex else "–") for c in columns] for k in order]
    shown = pd.DataFrame(rows, columns=keys + [f"{dataset_name(d)} {m}" for d, m in columns])
    return _latex_frame(shown) if latex else shown


def table3_wide(df: pd.DataFrame) -> pd.DataFrame:
    """One formatted row per (dataset, encoder, metric), plain text (to_latex escapes it)."""
    if df.empty:
        return df
    f = df.assign(dataset=df["dataset"].map(dataset_name), encoder=df["encoder"].map(model_name),
                  original=df["original"].map("{:.2f}".format),
                  with_attenmixer=df["with_attenmixer"].map("{:.2f}".format),
                  improvement=df["improvement_pct"].map("{:+.2f}%".format),
                  d=[str(a) if a == b else f"{a} vs {b}"
                     for a, b in zip(df["dim_original"], df["dim_with_attenmixer"])])
    keys = ["dataset", "encoder", "d", "metric", "original", "with_attenmixer", "improvement"]
    if df["runs"].nunique() > 1 or df["runs"].str.contains(",").any():  # the rows name the runs they came from
        keys.append("runs")
    return f[keys].rename(columns={"with_attenmixer": "w/ Atten-Mixer"})


def to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no recorded runs for this table_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# LaTeX. A shown frame whose cells are LaTeX already (`latex=True`) says so in `attrs`: pandas keeps no marker
# on the strings themselves. Every other frame holds plain text, escaped here.
LATEX_ATTR = "latex"
PACKAGES = "% requires \\usepackage{booktabs}\n"
TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": "$<$", ">": "$>$", "|": "$|$"}
# What pdflatex cannot take as it is, in the forms it can.
TEX_UNICODE = {"±": r"$\pm$", "–": "--", "—": "---", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$",
               "≈": r"$\approx$", "…": r"\ldots{}", "→": r"$\rightarrow$", "·": r"$\cdot$", "−": "-", "’": "'",
               "‘": "`", "“": "``", "”": "''", "°": r"$^\circ$", "µ": r"$\mu$"}
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lamda", "mu",
         "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"}
TABLE_PREFIX = re.compile(r"\s*Table\s+\d+\w*\s*(?:\((?P<aside>[^)]*)\))?\s*:\s*")
NUMBER = re.compile(r"(?:\\(?:textbf|underline)\{|<u>|\*\*)*[+-]?\d")


def _latex_frame(df: pd.DataFrame) -> pd.DataFrame:
    df.attrs[LATEX_ATTR] = True
    return df


def _tex_char(ch: str) -> str:
    if ch in TEX_SPECIAL:
        return TEX_SPECIAL[ch]
    if ch.isascii():
        return ch
    if ch in TEX_UNICODE:
        return TEX_UNICODE[ch]
    name = unicodedata.name(ch, "").split()
    if name[:2] == ["GREEK", "SMALL"] and name[-1].lower() in GREEK:  # σ -> $\sigma$
        return f"$\\{name[-1].lower().replace('lamda', 'lambda')}$"
    return unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode() or "?"


def tex_text(value) -> str:
    """Plain text as LaTeX that pdflatex takes: special characters escaped, no Unicode left."""
    return "--" if _missing(value) else "".join(_tex_char(ch) for ch in str(value))


def caption_text(caption: str) -> str:
    """'Table 2 (valid selection): HR@20 ...' -> 'HR@20 ... (valid selection)': LaTeX numbers its tables."""
    m = TABLE_PREFIX.match(caption)
    if not m:
        return caption.strip()
    rest = caption[m.end():].strip()
    return f"{rest} ({m['aside'].strip()})" if m["aside"] else rest


def _label(label: str | None, caption: str) -> str:
    if label is None:  # 'Table 2: ...' -> table2
        m = re.match(r"\s*Table\s+(\w+)", caption)
        label = f"table{m[1]}" if m else caption[:40]
    label = label[4:] if label.startswith("tab:") else label
    return "tab:" + (re.sub(r"[^A-Za-z0-9:._+=-]+", "-", label).strip("-") or "table")


def _numeric(values) -> bool:
    texts = [str(v).strip() for v in values if not _missing(v) and str(v).strip() not in ("", "–", "--")]
    return bool(texts) and all(NUMBER.match(t) for t in texts)


TEXT_COLUMNS = ("model", "run", "runs", "dataset", "encoder", "statistic", "metric", "d")


def column_format(df: pd.DataFrame) -> str:
    """'l' for text columns (the key columns always: run ids may look like numbers), 'r' for numbers."""
    return "".join("r" if str(col) not in TEXT_COLUMNS and _numeric(df.iloc[:, i]) else "l"
                   for i, col in enumerate(df.columns))


def _table_float(styler, caption: str, label: str | None, columns: str) -> str:
    text = styler.to_latex(environment="table", position="t", position_float="centering", hrules=True,
                           caption=tex_text(caption_text(caption)), label=_label(label, caption),
                           column_format=columns)
    return PACKAGES + "".join(_tex_char(ch) if not ch.isascii() else ch for ch in text)


def empty_latex(caption: str, label: str | None = None) -> str:
    """A valid table float whose body says that no run was recorded for it."""
    styler = pd.DataFrame({"": ["no recorded runs"]}).style.hide(axis="index").hide(axis="columns")
    return _table_float(styler, caption, label, "l").replace("\\toprule\n\\midrule\n", "\\toprule\n")


def to_latex(df: pd.DataFrame, caption: str, label: str | None = None) -> str:
    """A booktabs `table` float of a shown table, through `Styler.to_latex`. `caption` may start with 'Table N:'
    (dropped); `label` gives `\\label{tab:<label>}` (default from the caption's table number)."""
    if df.empty:
        return empty_latex(caption, label)
    cell = (lambda v: "--" if _missing(v) else str(v)) if df.attrs.get(LATEX_ATTR) else tex_text
    styler = df.style.hide(axis="index").format(cell).format_index(tex_text, axis="columns")
    return _table_float(styler, caption, label, column_format(df))
