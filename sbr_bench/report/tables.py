"""Tables 1-4 of the paper from recorded runs, as tidy DataFrames (CSV) and formatted Markdown/LaTeX."""

from __future__ import annotations

import pandas as pd

from ..models.registry import TABLE2_ORDER, TABLE3, is_ablation
from ..runs import HEADLINE, format_cell, headline_header
from .records import latest_with

TABLE3_ENCODERS = ("srgnn", "sgnnhn", "gcsan", "dhcn")  # LESSR's wide states do not compose
ABLATIONS = ("attenmixer", "attenmixer-M", "attenmixer-IP", "attenmixer-LI", "attenmixer-LP")


def datasets_of(records) -> list[str]:
    return list(dict.fromkeys(r.dataset for r in records if r.kind == "run"))


def table1(records) -> pd.DataFrame:
    """Dataset statistics (the newest recorded run of each dataset)."""
    rows = []
    for ds in datasets_of(records):
        rec = next(r for r in reversed(records) if r.dataset == ds and r.kind == "run")
        s = rec.config.get("dataset", {}).get("stats", {})
        rows.append({"dataset": ds, "clicks": s.get("clicks"), "sessions": s.get("sessions"),
                     "items": s.get("items"), "avg_length": s.get("avg_length"),
                     "whole_sessions": s.get("whole_sessions"), "run": rec.run_id})
    return pd.DataFrame(rows)


def _metric_rows(records, dataset, models, extra=None, mode="valid"):
    """Rows per model and metric; under `literature` the metric names say best-on-test."""
    rows = []
    for model in models:
        rec = latest_with(records, dataset, model)
        if rec is None:
            continue
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
                             run=rec.run_id, dim=rec.config.get("cfg", {}).get(model, {}).get("dim")))
        timing = entry.get("timing", {})
        if "epoch_median_s" in timing:
            rows.append(dict(extra or {}, dataset=dataset, model=model, metric="s/epoch",
                             mean=timing["epoch_median_s"], std=timing.get("epoch_iqr_s", 0.0),
                             seeds=len(entry["seeds_ok"]), mark="", best=False, best_significant=False,
                             run=rec.run_id))
    return rows


def table2(records, mode="valid") -> pd.DataFrame:
    """Accuracy (HR@20, MRR@20: mean, std over seeds, significance mark vs the run's best) and median
    seconds per training epoch (std column = IQR), per dataset and model."""
    rows = []
    for ds in datasets_of(records):
        names = {m for r in records if r.dataset == ds and r.kind == "run" and not r.sweep for m in r.ok_models()}
        order = [m for m in TABLE2_ORDER if m in names] + sorted(
            m for m in names if m not in TABLE2_ORDER and "+" not in m and not is_ablation(m))
        rows += _metric_rows(records, ds, order, mode=mode)
    return pd.DataFrame(rows)


def table3(records, mode="valid") -> pd.DataFrame:
    """Each encoder with its own readout vs with Atten-Mixer; improvement in % of the former, and the
    embedding size d of each side (the paper compares at equal d)."""
    rows = []
    for ds in datasets_of(records):
        for enc in TABLE3_ENCODERS:
            pair = {}
            for variant, name in (("original", enc), ("w/ Atten-Mixer", f"{enc}+attenmixer")):
                for r in _metric_rows(records, ds, [name], mode=mode):
                    if r["metric"] != "s/epoch":
                        pair[(variant, r["metric"])] = r
            for metric in headline_header(mode):
                a, b = pair.get(("original", metric)), pair.get(("w/ Atten-Mixer", metric))
                if a and b:
                    rows.append({"dataset": ds, "encoder": enc, "metric": metric, "original": a["mean"],
                                 "original_std": a["std"], "with_attenmixer": b["mean"],
                                 "with_attenmixer_std": b["std"],
                                 "improvement_pct": 100.0 * (b["mean"] - a["mean"]) / a["mean"] if a["mean"] else float("nan"),
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
    """Atten-Mixer and its ablations (-M, -IP, -LI, -LP)."""
    rows = []
    for ds in datasets_of(records):
        rows += [r for r in _metric_rows(records, ds, ABLATIONS, mode=mode) if r["metric"] != "s/epoch"]
    return pd.DataFrame(rows)


def expected_missing(records) -> list[str]:
    """Runs a full report needs but that are not recorded (named in the report instead of crashing)."""
    missing = []
    for ds in datasets_of(records) or ["(any dataset)"]:
        have = {m for r in records if r.dataset == ds and r.kind == "run" for m in r.ok_models()}
        for group, names in (("Table 2", TABLE2_ORDER), ("Table 3", TABLE3),
                             ("Table 4", ABLATIONS)):
            lacking = [n for n in names if n not in have]
            if lacking:
                missing.append(f"{group}, {ds}: no finished run of {', '.join(lacking)}")
    return missing


def wide(df: pd.DataFrame, row_key="model", latex=False) -> pd.DataFrame:
    """Long metric rows -> one formatted row per model, a column per (dataset, metric)."""
    if df.empty:
        return df
    cells = df.apply(lambda r: format_cell(r["mean"], r["std"], r["seeds"], r["mark"],
                                           r["best"] and r["best_significant"], "latex" if latex else "markdown"),
                     axis=1)
    out = df.assign(cell=cells).pivot_table(index=row_key, columns=["dataset", "metric"], values="cell",
                                            aggfunc="first", sort=False)
    out.columns = [f"{d} {m}" for d, m in out.columns]
    return out.reset_index().fillna("–")


def table3_wide(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    f = df.assign(original=df["original"].map("{:.2f}".format),
                  with_attenmixer=df["with_attenmixer"].map("{:.2f}".format),
                  improvement=df["improvement_pct"].map("{:+.2f}%".format),
                  d=[str(a) if a == b else f"{a} vs {b}" for a, b in zip(df["dim_original"], df["dim_with_attenmixer"])])
    return f[["dataset", "encoder", "d", "metric", "original", "with_attenmixer", "improvement"]]


def to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no recorded runs for this table_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _tex(value) -> str:
    return str(value).replace("_", r"\_").replace("%", r"\%")


def to_latex(df: pd.DataFrame, caption: str) -> str:
    cols = " & ".join(_tex(c) for c in df.columns)
    body = "\n".join(" & ".join(_tex(v) for v in row) + r" \\"
                     for row in df.itertuples(index=False))
    return (f"\\begin{{table}}[t]\n\\centering\n\\caption{{{caption}}}\n"
            f"\\begin{{tabular}}{{{'l' * len(df.columns)}}}\n\\toprule\n{cols} \\\\\n\\midrule\n{body}\n"
            "\\bottomrule\n\\end{tabular}\n\\end{table}\n")
