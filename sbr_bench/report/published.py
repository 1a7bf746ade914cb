"""Our numbers beside published ones, from the two runs `sbr-bench reproduce` makes.

Three columns of ours:
- literature: each metric's best test epoch, as the papers' code reports it (test-selected, optimistic);
- refit: the literature run's test numbers at the epoch chosen on validation by the valid run. A refit
  (`run --selection refit`) trains a fresh model with the same seed on the same data in the same order
  for that many epochs, and the literature run's test passes leave its random state untouched, so on
  CPU it is bit for bit this point of the literature trajectory (tests/test_reproduce.py checks it; on
  CUDA, up to the nondeterminism of scatter kernels). Reading it off saves training every model a third
  time. No choice is made on the test split;
- valid: the valid run's own test numbers (selected on validation, never trained on it).
"""

from __future__ import annotations

import math

import numpy as np


def refit_from_trajectory(valid_unit, literature_unit) -> dict | None:
    """The test metrics a refit would give: the literature trajectory at the epoch chosen on validation."""
    chosen, lit = valid_unit.read_summary(), literature_unit.read_summary()
    if not chosen or not lit or chosen.get("status") != "ok" or lit.get("status") != "ok":
        return None
    if chosen.get("kind") == "baseline":
        return lit["test"]  # fitted on train + validation: the refit of a model without epochs
    rows = {r["epoch"]: r for r in literature_unit.read_epochs()}
    row = rows.get(chosen["best_epoch"])
    return None if row is None else row.get("test")


def interval(values: list[float]) -> dict:
    """Mean, sample std and a 95% t-interval over seeds (no interval from one seed)."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    out = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}
    if len(a) > 1:
        half = float(stats.t.ppf(0.975, len(a) - 1) * out["std"] / math.sqrt(len(a)))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def comparison(ref, dataset: str, valid_path, literature_path) -> dict:
    """Per model and metric: published, ours (literature, refit, valid), and the differences."""
    from ..runs import RunDir

    published = ref.numbers(dataset)
    valid_run, lit_run = RunDir(valid_path), RunDir(literature_path)
    config = lit_run.config()
    rows = []
    for model in config["models"]:
        per = {"literature": [], "refit": [], "valid": []}
        for seed in config["seeds"]:
            lit = lit_run.unit(model, seed).read_summary() or {}
            val = valid_run.unit(model, seed).read_summary() or {}
            if lit.get("status") == "ok":
                per["literature"].append(lit["test"])
            if val.get("status") == "ok":
                per["valid"].append(val["test"])
            refit = refit_from_trajectory(valid_run.unit(model, seed), lit_run.unit(model, seed))
            if refit is not None:
                per["refit"].append(refit)
        for metric in ("HR@20", "MRR@20"):
            row = {"model": model, "metric": metric, "published": published.get(model, {}).get(metric),
                   "table": published.get(model, {}).get("table")}
            for mode, values in per.items():
                found = [v[metric] for v in values if metric in v]
                row[mode] = interval(found) if found else None
                if row[mode] and row["published"] is not None:
                    row[f"{mode}_diff"] = row[mode]["mean"] - row["published"]
            rows.append(row)
    return {"paper": ref.key, "dataset": dataset, "cite": ref.cite(), "seeds": config["seeds"],
            "epochs": {m: config["cfg"][m].get("epochs") for m in config["models"]},
            "runs": {"valid": valid_run.run_id, "literature": lit_run.run_id}, "rows": rows}


def _ours(stat: dict | None) -> str:
    if not stat:
        return "–"
    text = f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat["n"] > 1 else "")
    return text + (f" [{stat['ci95'][0]:.2f}, {stat['ci95'][1]:.2f}]" if "ci95" in stat else "")


def _diff(value) -> str:
    return "–" if value is None else f"{value:+.2f}"


def comparison_markdown(table: dict, ref, dataset: str, entry: dict) -> str:
    """The side-by-side table; the literature column is labelled test-selected in its own header."""
    from ..runs import SELECTIONS

    header = ["model", "metric", "published", "ours: literature (best-on-test, optimistic)", "diff",
              "ours: refit", "diff", "ours: valid (no refit)", "diff"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table["rows"]:
        pub = "–" if r["published"] is None else f"{r['published']:.2f}"
        lines.append("| " + " | ".join([
            r["model"], r["metric"], pub, _ours(r["literature"]), _diff(r.get("literature_diff")),
            _ours(r["refit"]), _diff(r.get("refit_diff")), _ours(r["valid"]), _diff(r.get("valid_diff"))]) + " |")
    n = len(table["seeds"])
    return "\n".join([
        f"# {ref.paper['title']} ({ref.paper['venue']}): {dataset}, published vs sbr-bench",
        "",
        f"Published: {ref.cite()}; the paper selects epochs: {ref.paper['selection']}. "
        f"Protocol: {entry.get('protocol', '?')}. Ours: test split ×100, mean ± std over {n} seed(s)"
        + (" with a 95% t-interval" if n > 1 else " (no interval from one seed)")
        + f"; epochs per model {table['epochs']}; runs {table['runs']['valid']} and {table['runs']['literature']}.",
        "",
        f"- literature: {SELECTIONS['literature']}.",
        f"- refit: {SELECTIONS['refit']} (read off the literature trajectory at the validation-chosen epoch).",
        f"- valid: {SELECTIONS['valid']}.",
        "",
        *lines,
    ]) + "\n"
