"""Figures 3, 5, 6, 7 and the per-epoch timing comparison, from recorded runs only.

Every function returns `(caption, stem)` after writing `<stem>.png/.svg/.pdf`, or None when the runs it
needs are not recorded (the report then names what is missing)."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..evaluate import bucket_metrics  # noqa: E402
from ..io import atomic_path  # noqa: E402
from .records import latest_with  # noqa: E402

FORMATS = ("png", "svg", "pdf")
FIG7_MODELS = ("srgnn", "gcsan", "srgnn+attenmixer", "attenmixer")
FINE_EDGES = (2, 3, 5, 8, 12)
PHASES = ("data", "forward", "backward", "eval")


def _save(fig, out_dir, name):
    for fmt in FORMATS:
        with atomic_path(out_dir / f"{name}.{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return name


def _provenance(recs) -> str:
    recs = list({r.run_id: r for r in recs}.values())
    seeds = sorted({s for r in recs for s in r.config.get("seeds", [])})
    return (f"runs {', '.join(r.run_id for r in recs)}; seeds {seeds}; dataset "
            f"{', '.join(sorted({r.dataset for r in recs}))}; hardware {'; '.join(sorted({r.hardware() for r in recs}))}")


def figure3_density(records, out_dir):
    """Density ratio per weight group vs training steps (SparseVD dissection runs)."""
    recs = [r for r in records if r.kind == "dissect"]
    if not recs:
        return None
    fig, axes = plt.subplots(1, len(recs), figsize=(6 * len(recs), 4), squeeze=False)
    for ax, rec in zip(axes[0], recs):
        model = rec.config["models"][0]
        by_group = defaultdict(lambda: defaultdict(list))
        for row in rec.density_rows(model):
            for group, value in row["density"].items():
                by_group[group][row["step"]].append(value)
        for group, series in sorted(by_group.items()):
            steps = sorted(series)
            ax.plot(steps, [np.mean(series[s]) for s in steps], label=group)
        ax.set(title=f"{model} on {rec.dataset}", xlabel="training steps", ylabel="density ratio", ylim=(0, 1.05))
        ax.legend(fontsize=8)
    caption = ("Figure 3: density ratio (share of weights with log α below the threshold, Eq. 3) of each "
               f"weight group during SparseVD training. From {_provenance(recs)}.")
    return caption, _save(fig, out_dir, "figure3_density")


def figure_sweep(records, out_dir, param, number):
    """HR@20 and MRR@20 vs one readout parameter (levels -> Figure 5, heads -> Figure 6)."""
    points = defaultdict(dict)  # (dataset, model) -> value -> (test stats, record)
    for rec in records:
        sw = rec.sweep
        if not sw or sw.get("param") != param:
            continue
        model = sw["model"]
        entry = rec.results["models"].get(model)
        if entry and entry["status"] != "failed":
            points[(rec.dataset, model)][sw["value"]] = (entry["test"], rec)
    if not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    used = []
    for (ds, model), by_value in sorted(points.items()):
        xs = sorted(by_value)
        used += [rec for _, rec in by_value.values()]
        for ax, metric in zip(axes, ("HR@20", "MRR@20")):
            means = [by_value[x][0][metric]["mean"] for x in xs]
            stds = [by_value[x][0][metric]["std"] for x in xs]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=f"{model} / {ds}")
            ax.set(xlabel=param, ylabel=f"{metric} (test, ×100)")
    axes[0].legend(fontsize=8)
    caption = (f"Figure {number}: test HR@20 and MRR@20 as `{param}` varies (mean ± std over seeds). "
               f"From {_provenance(used)}.")
    return caption, _save(fig, out_dir, f"figure{number}_{param}")


def figure7_lengths(records, out_dir):
    """HR@20 and MRR@20 on short (<= 5) vs long prefixes, and on finer length buckets."""
    rows, used = [], []
    for ds in dict.fromkeys(r.dataset for r in records if r.kind == "run"):
        for model in FIG7_MODELS:
            rec = latest_with(records, ds, model)
            ranks = rec.ranks(model) if rec else []
            if not ranks:
                continue
            used.append(rec)
            for edges, kind in (((5,), "short/long"), (FINE_EDGES, "fine")):
                per_seed = [bucket_metrics(r["optimistic"], r["pessimistic"], r["length"], edges) for r in ranks]
                for bucket in per_seed[0]:
                    for metric in ("HR@20", "MRR@20"):
                        vals = [p[bucket][metric] for p in per_seed if bucket in p]
                        rows.append(dict(dataset=ds, model=model, kind=kind, bucket=bucket, metric=metric,
                                         mean=float(np.mean(vals)), examples=per_seed[0][bucket]["examples"]))
    if not rows:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, kind in enumerate(("short/long", "fine")):
        for row_i, metric in enumerate(("HR@20", "MRR@20")):
            ax = axes[row_i][col]
            sel = [r for r in rows if r["kind"] == kind and r["metric"] == metric]
            series = defaultdict(list)
            for r in sel:
                series[(r["model"], r["dataset"])].append(r)
            buckets = list(dict.fromkeys(r["bucket"] for r in sel))
            width = 0.8 / max(len(series), 1)
            for i, ((model, ds), rs) in enumerate(sorted(series.items())):
                vals = {r["bucket"]: r["mean"] for r in rs}
                ax.bar(np.arange(len(buckets)) + i * width, [vals.get(b, 0) for b in buckets], width,
                       label=f"{model} / {ds}")
            ax.set_xticks(np.arange(len(buckets)) + width * (len(series) - 1) / 2, buckets)
            ax.set(xlabel="prefix length", ylabel=f"{metric} (×100)")
    axes[0][0].legend(fontsize=7)
    caption = ("Figure 7: test HR@20 and MRR@20 by prefix length, short (≤ 5) vs long (left) and finer "
               f"buckets (right), mean over seeds. From {_provenance(used)}.")
    return caption, _save(fig, out_dir, "figure7_session_length"), rows


def figure_timing(records, out_dir):
    """Stacked median per-epoch phase times per model (training phases + validation pass)."""
    rows, used = [], []
    for ds in dict.fromkeys(r.dataset for r in records if r.kind == "run"):
        names = {m for r in records if r.dataset == ds and r.kind == "run" for m in r.ok_models()}
        for model in sorted(names):
            rec = latest_with(records, ds, model)
            t = rec.results["models"][model].get("timing", {}) if rec else {}
            if all(f"{p}_median_s" in t for p in PHASES):
                rows.append((ds, model, [t[f"{p}_median_s"] for p in PHASES]))
                used.append(rec)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 4))
    bottom = np.zeros(len(rows))
    for i, phase in enumerate(PHASES):
        vals = np.array([r[2][i] for r in rows])
        ax.bar(range(len(rows)), vals, bottom=bottom, label=phase)
        bottom += vals
    ax.set_xticks(range(len(rows)), [f"{m}\n{d}" for d, m, _ in rows], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="seconds per epoch (median)")
    ax.legend()
    caption = ("Per-epoch time by phase (median over epochs after the first; eval = validation pass). "
               f"From {_provenance(used)}.")
    return caption, _save(fig, out_dir, "timing_phases")


INTENT_MEASURES = (("target_concept", "mass on the target's concept"), ("on_intent", "mass on on-intent clicks"))


def figure_intent_recovery(records, out_dir):
    """Intent recovery (`sbr_bench.intent`) per model on synthetic data: the attention mass on the clicks
    of the target's concept and on on-intent clicks, next to the same mass under uniform attention."""
    rows, used = [], []
    for ds in dict.fromkeys(r.dataset for r in records if r.kind == "run"):
        names = {m for r in records if r.dataset == ds and r.kind == "run" for m in r.ok_models()}
        for model in sorted(names):
            rec = latest_with(records, ds, model)
            found = [s.get("intent_recovery") for s in (rec.run.unit(model, seed).read_summary()
                                                        for seed in rec.config.get("seeds", [])) if s] if rec else []
            found = [f for f in found if f]
            if not found:
                continue
            used.append(rec)
            for key, _ in INTENT_MEASURES:
                vals = [f[key] for f in found if f.get(key) is not None]
                unif = [f[f"{key}_uniform"] for f in found if f.get(f"{key}_uniform") is not None]
                if vals and unif:
                    rows.append(dict(dataset=ds, model=model, measure=key, attention=float(np.mean(vals)),
                                     uniform=float(np.mean(unif)), lift=float(np.mean(vals) / np.mean(unif)),
                                     seeds=len(vals)))
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(INTENT_MEASURES), figsize=(11, 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], INTENT_MEASURES):
        sel = [r for r in rows if r["measure"] == key]
        x = np.arange(len(sel))
        ax.bar(x, [r["attention"] for r in sel], 0.6, label="model attention")
        ax.scatter(x, [r["uniform"] for r in sel], color="black", marker="_", s=600, zorder=3,
                   label="uniform attention")
        for xi, r in zip(x, sel):  # the lift over uniform, the number to read
            ax.text(xi, min(r["attention"], 0.9) + 0.03, f"×{r['lift']:.3f}", ha="center", fontsize=7)
        ax.set_xticks(x, [f"{r['model']}\n{r['dataset']}" for r in sel], rotation=45, ha="right", fontsize=8)
        ax.set(ylabel=label, ylim=(0, 1))
    axes[0][0].legend(fontsize=8)
    caption = ("Intent recovery on synthetic data: attention mass on the prefix clicks generated by the target "
               "click's concept (left) and on on-intent, non-noise clicks (right), mean over seeds; the black "
               "mark is the same mass under uniform attention (a bar above it = the attention finds the intent). "
               f"See docs/synthetic.md. From {_provenance(used)}.")
    return caption, _save(fig, out_dir, "intent_recovery"), rows
