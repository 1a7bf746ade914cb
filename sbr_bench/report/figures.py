"""Figures 3, 5, 6, 7, the per-epoch timing comparison and intent recovery, from recorded runs only.

Every function returns `(caption, stem)` or `(caption, stem, rows)` after writing `<stem>.png/.svg/.pdf`
(double column) and `<stem>_column.png/.svg/.pdf` (single column) in the style of `style`, or None when the
runs it needs are not recorded (the report then names what is missing). Each figure is gathered from the
records first, then drawn by a `draw(width)` function that `style.save` calls once per width."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..evaluate import bucket_metrics
from ..significance import mean_and_std
from . import style
from .names import dataset_name, model_name, parameter_name
from .records import finished_models, latest_with, table2_order

FIG7_MODELS = ("srgnn", "gcsan", "srgnn+attenmixer", "attenmixer")
FINE_EDGES = (2, 3, 5, 8, 12)
METRICS = ("HR@20", "MRR@20")
TRAIN_PHASES = (("data", "data loading"), ("forward", "forward"), ("backward", "backward"))
INTENT_MEASURES = (("target_concept", "target's concept"), ("on_intent", "on-intent clicks"))


def _provenance(recs) -> str:
    recs = list({r.run_id: r for r in recs}.values())
    seeds = sorted({s for r in recs for s in r.config.get("seeds", [])})
    hardware = "; ".join(sorted({r.hardware() for r in recs}))
    return (f"runs {', '.join(r.run_id for r in recs)}; seeds {seeds}; dataset "
            f"{', '.join(sorted({dataset_name(r.dataset) for r in recs}))}; hardware {hardware}")


def _caption(text: str, recs, stem: str) -> str:
    return f"{text} From {_provenance(recs)}. {style.caption_files(stem)}"


def _rotated_ticks(ax, labels):
    ax.set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right", rotation_mode="anchor")


# Figure 3 ------------------------------------------------------------------------------------------------


def _density_series(rec) -> dict:
    """group -> step -> density of each seed."""
    by_group = defaultdict(lambda: defaultdict(list))
    for row in rec.density_rows(rec.config["models"][0]):
        for group, value in row["density"].items():
            by_group[group][row["step"]].append(value)
    return by_group


def draw_density(panels, width):
    """`panels`: (title, {group: {step: [densities]}}) per dissect run."""
    groups = sorted({g for _, series in panels for g in series})
    fig, axes = style.panels(width, len(panels), groups, titles=[title for title, _ in panels])
    for ax, (title, series) in zip(axes, panels):
        for group, by_step in sorted(series.items()):
            steps = sorted(by_step)
            stats = [mean_and_std(by_step[s]) for s in steps]
            ax.errorbar(steps, [m for m, _ in stats], yerr=[s for _, s in stats], label=group,
                        **style.series_style(groups.index(group)))
        ax.set(title=title, xlabel="training steps", ylabel="density ratio", ylim=(0, 1.05))
        style.integer_axis(ax.xaxis)
    style.legend_below(fig, *style.unique_legend(axes), width)
    return fig


def figure3_density(records, out_dir):
    """Density ratio per weight group vs training steps (SparseVD dissection runs), one panel per run."""
    recs = [r for r in records if r.kind == "dissect"]
    if not recs:
        return None
    panels = [(f"{model_name(r.config['models'][0])} on {dataset_name(r.dataset)}", _density_series(r)) for r in recs]
    stem = style.save(lambda width: draw_density(panels, width), out_dir, "figure3_density")
    caption = _caption("Figure 3: density ratio (share of weights with log α below the threshold, Eq. 3) of each "
                       "weight group during SparseVD training, one panel per dissection run (mean ± std over "
                       "seeds).", recs, stem)
    return caption, stem


# Figures 5 and 6 -----------------------------------------------------------------------------------------


def sweep_points(records, param) -> dict:
    """(dataset, model, sweep id) -> value -> (test stats, record) of every finished point of a sweep over
    `param`: sweeps of other settings (another id) stay separate lines, never merged point by point."""
    points = defaultdict(dict)
    for rec in records:
        sw = rec.sweep
        if not sw or sw.get("param") != param:
            continue
        entry = rec.results["models"].get(sw["model"])
        if entry and entry["status"] != "failed":
            points[(rec.dataset, sw["model"], sw.get("id", ""))][sw["value"]] = (entry["test"], rec)
    return dict(points)


def _sweep_labels(points) -> dict:
    """Each line's legend label: the model's name, and its sweep id where one model has several sweeps."""
    sweeps = defaultdict(set)
    for ds, model, sweep in points:
        sweeps[model].add(sweep)
    return {key: model_name(key[1]) + (f" ({key[2]})" if len(sweeps[key[1]]) > 1 else "") for key in points}


def draw_sweep(points, param, width):
    """One panel per dataset and metric, one line per model (and sweep), mean ± std over seeds."""
    datasets = list(dict.fromkeys(ds for ds, _, _ in points))
    order = {m: i for i, m in enumerate(table2_order(m for _, m, _ in points))}
    series = sorted({(m, sw) for _, m, sw in points}, key=lambda ms: (order[ms[0]], ms[1]))
    labels = _sweep_labels(points)
    cells = [(ds, metric) for ds in datasets for metric in METRICS]
    cols = max(2, style.max_columns(width) // 2 * 2)  # even: a dataset's two metrics side by side
    names = list(dict.fromkeys(labels[(ds, m, sw)] for ds in datasets for m, sw in series if (ds, m, sw) in points))
    fig, axes = style.panels(width, len(cells), names, max_cols=cols)
    for ax, (ds, metric) in zip(axes, cells):
        values = set()
        for i, (model, sweep) in enumerate(series):
            by_value = points.get((ds, model, sweep))
            if not by_value:
                continue
            xs = sorted(by_value)
            values.update(xs)
            ax.errorbar(xs, [by_value[x][0][metric]["mean"] for x in xs],
                        yerr=[by_value[x][0][metric]["std"] for x in xs], label=labels[(ds, model, sweep)],
                        **style.series_style(i))
        ax.set(title=dataset_name(ds), xlabel=parameter_name(param), ylabel=f"{metric} (×100)")
        style.parameter_axis(ax, param, sorted(values))
    style.legend_below(fig, *style.unique_legend(axes), width)
    return fig


def figure_sweep(records, out_dir, param, number):
    """HR@20 and MRR@20 vs one readout parameter (levels -> Figure 5, heads -> Figure 6)."""
    points = sweep_points(records, param)
    if not points:
        return None
    stem = style.save(lambda width: draw_sweep(points, param, width), out_dir, f"figure{number}_{param}")
    used = [rec for by_value in points.values() for _, rec in by_value.values()]
    caption = _caption(f"Figure {number}: test HR@20 and MRR@20 as {parameter_name(param)} varies, one panel per "
                       "dataset and metric (mean ± std over seeds).", used, stem)
    return caption, stem


# Figure 7 ------------------------------------------------------------------------------------------------


def length_rows(records) -> tuple[list[dict], list]:
    """Per dataset, model of FIG7_MODELS, bucketing, bucket and metric: mean and std over seeds of the
    per-seed bucket metrics, and the bucket's example count. Each model only under its own name."""
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
                    having = [p[bucket] for p in per_seed if bucket in p]  # seeds whose test has this bucket
                    for metric in METRICS:
                        mean, std = mean_and_std([h[metric] for h in having])
                        rows.append(dict(dataset=ds, model=model, kind=kind, bucket=bucket, metric=metric,
                                         mean=mean, std=std, seeds=len(having),
                                         examples=per_seed[0][bucket]["examples"]))
    return rows, used


def _count(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10000 else str(n)


def _bucket_labels(sel, crowded=False) -> list[str]:
    """Per bucket of `sel`, its name over its example count ('≤5', '(n=1234)'); on one line where the
    labels are rotated."""
    examples = {r["bucket"]: r["examples"] for r in sel}
    sep = " " if crowded else "\n"
    return [f"{_bucket_text(b)}{sep}(n={_count(n)})" for b, n in examples.items()]


def _bucket_text(bucket: str) -> str:
    """'<=5' -> '≤5', '3-3' -> '3', '4-5' -> '4–5'."""
    lo, dash, hi = bucket.partition("-")
    if dash and lo == hi:
        return lo
    return bucket.replace("<=", "≤").replace("-", "–")


def _crowded(sel, panel_in: float) -> bool:
    """Whether the two-line bucket labels of `sel` overlap in a panel `panel_in` inches wide."""
    labels = _bucket_labels(sel)
    return len(labels) * (style.text_width_in(labels) + 0.08) > panel_in


def _length_panel(ax, sel, models, crowded):
    buckets = list(dict.fromkeys(r["bucket"] for r in sel))
    present = [m for m in models if any(r["model"] == m for r in sel)]
    bar = 0.8 / max(len(present), 1)
    for j, model in enumerate(present):
        stats = {r["bucket"]: r for r in sel if r["model"] == model}
        x = np.arange(len(buckets)) + (j - (len(present) - 1) / 2) * bar
        ax.bar(x, [stats[b]["mean"] if b in stats else np.nan for b in buckets], bar,
               yerr=[stats[b]["std"] if b in stats else 0 for b in buckets], label=model_name(model),
               color=style.series_style(FIG7_MODELS.index(model))["color"], error_kw=dict(lw=0.6))
    ax.set_xticks(np.arange(len(buckets)), _bucket_labels(sel, crowded), rotation=90 if crowded else 0)
    ax.grid(axis="x", visible=False)


def draw_lengths(rows, width):
    """Per dataset a block: short (≤ 5) vs long, then finer buckets, each for HR@20 and MRR@20; all four in
    one row at double-column width, two rows of two at single-column width."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = [m for m in FIG7_MODELS if any(r["model"] == m for r in rows)]
    kinds = (("short/long", "≤ 5 vs > 5"), ("fine", "by prefix length"))
    wide = width >= 4 * style.MIN_PANEL_IN
    ncols, ratios = (4, (1, 1, 2, 2)) if wide else (2, (1, 1))

    def select(ds, kind, metric="HR@20"):
        return [r for r in rows if r["dataset"] == ds and r["kind"] == kind and r["metric"] == metric]

    def panel_in(kind):  # a panel's width less its y axis
        ratio = ratios[-1] if kind == "fine" else ratios[0]
        return width * ratio / sum(ratios) - 0.45

    crowded = {(ds, kind): _crowded(select(ds, kind), panel_in(kind)) for ds in datasets for kind, _ in kinds}
    rotated = {key: style.text_width_in(_bucket_labels(select(*key), True)) if c else 0.0 for key, c in crowded.items()}
    # rotated labels lengthen their row: both kinds share a row when wide
    extra = sum(max(rotated[(ds, k)] for k, _ in kinds) if wide else sum(rotated[(ds, k)] for k, _ in kinds)
                for ds in datasets)
    fig = style.figure(width, 4 // ncols * len(datasets), style.row_height(width, ncols) + 0.2,
                       style.legend_layout([model_name(m) for m in models], width)[1], extra)
    axes = []
    for sub, ds in zip(fig.subfigures(len(datasets), 1, squeeze=False)[:, 0], datasets):
        sub.suptitle(dataset_name(ds))
        grid = sub.subplots(4 // ncols, ncols, squeeze=False, gridspec_kw=dict(width_ratios=ratios)).ravel()
        for ax, ((kind, title), metric) in zip(grid, [(k, m) for k in kinds for m in METRICS]):
            _length_panel(ax, select(ds, kind, metric), models, crowded[(ds, kind)])
            ax.set(title=title, ylabel=f"{metric} (×100)")
            axes.append(ax)
    style.legend_below(fig, *style.unique_legend(axes), width)
    return fig


def figure7_lengths(records, out_dir):
    """HR@20 and MRR@20 on short (<= 5) vs long prefixes, and on finer length buckets."""
    rows, used = length_rows(records)
    if not rows:
        return None
    stem = style.save(lambda width: draw_lengths(rows, width), out_dir, "figure7_session_length")
    shown = ", ".join(model_name(m) for m in dict.fromkeys(r["model"] for r in rows))
    caption = _caption("Figure 7: test HR@20 and MRR@20 by prefix length, short (≤ 5) vs long and finer buckets, "
                       f"mean ± std over seeds; n = test examples in the bucket. Models: {shown} (each drawn only "
                       "from its own runs).", used, stem)
    return caption, stem, rows


# Timing --------------------------------------------------------------------------------------------------


def training_stack(timing: dict) -> dict:
    """The training phases' median seconds, adjusted to stack to exactly the run's median epoch time:
    medians of parts need not add up to the median of the whole, so a shortfall is drawn as 'other' and an
    excess scales the phases down."""
    total = timing["epoch_median_s"]
    parts = {p: timing.get(f"{p}_median_s", 0.0) for p, _ in TRAIN_PHASES}
    summed = sum(parts.values())
    if summed > total > 0:
        return {p: v * total / summed for p, v in parts.items()} | {"other": 0.0}
    return parts | {"other": total - summed}


def timing_rows(records) -> tuple[list[dict], list]:
    rows, used = [], []
    for ds in dict.fromkeys(r.dataset for r in records if r.kind == "run"):
        for model in table2_order(finished_models(records, ds)):
            rec = latest_with(records, ds, model)
            t = rec.results["models"][model].get("timing", {}) if rec else {}
            if "epoch_median_s" not in t:  # counting and kNN models fit once, no epochs
                continue
            stack = training_stack(t)
            rows.append(dict(dataset=ds, model=model, run=rec.run_id, epoch_median_s=t["epoch_median_s"],
                             **{f"{p}_s": v for p, v in stack.items()}, eval_median_s=t.get("eval_median_s")))
            used.append(rec)
    return rows, used


def draw_timing(rows, width):
    """One panel per dataset: per model a bar of the training phases (its height = s/epoch of Table 2) and
    a hatched bar of the evaluation pass beside it."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    most = max(sum(r["dataset"] == ds for r in rows) for ds in datasets)
    cols = max(1, min(style.max_columns(width), int(width // (0.5 + 0.22 * most))))
    phases = [p for p, _ in TRAIN_PHASES] + ["other"]
    names = dict(TRAIN_PHASES, other="other (training)")
    labels = [names[p] for p in phases] + ["validation pass (eval)"]
    extra = style.text_width_in([model_name(r["model"]) for r in rows]) * 0.75  # labels at 45°
    fig, axes = style.panels(width, len(datasets), labels, max_cols=cols, row_extra_in=extra,
                             titles=[dataset_name(ds) for ds in datasets])
    for ax, ds in zip(axes, datasets):
        sel = [r for r in rows if r["dataset"] == ds]
        x = np.arange(len(sel))
        bottom = np.zeros(len(sel))
        for i, phase in enumerate(phases):
            vals = np.array([r[f"{phase}_s"] for r in sel])
            ax.bar(x - 0.2, vals, 0.4, bottom=bottom, label=names[phase], color=style.PALETTE[i])
            bottom += vals
        ax.bar(x + 0.2, [r["eval_median_s"] or 0.0 for r in sel], 0.4, label=labels[-1], color="white",
               edgecolor=style.PALETTE[6], hatch="////")
        _rotated_ticks(ax, [model_name(r["model"]) for r in sel])
        top = max(bottom.max(), max(r["eval_median_s"] or 0.0 for r in sel))
        # bars pin the y limits to their bottoms, the stack's top among them: leave headroom by hand
        ax.set(title=dataset_name(ds), ylabel="seconds per epoch (median)", ylim=(0, 1.05 * top or 1))
        ax.grid(axis="x", visible=False)
    style.legend_below(fig, *style.unique_legend(axes), width)
    return fig


def figure_timing(records, out_dir):
    """Median per-epoch training time stacked by phase per model, and the validation pass beside it."""
    rows, used = timing_rows(records)
    if not rows:
        return None
    stem = style.save(lambda width: draw_timing(rows, width), out_dir, "timing_phases")
    caption = _caption("Per-epoch time (median over epochs after the first), models in Table 2's order: the solid "
                       "bar stacks the training phases and is as high as Table 2's s/epoch ('other' = the part of "
                       "the epoch outside data loading, forward and backward); the hatched bar beside it is the "
                       "validation pass, not part of s/epoch. Models without epochs (counting, kNN) are not "
                       "drawn.", used, stem)
    return caption, stem, rows


# Intent recovery -----------------------------------------------------------------------------------------


def intent_rows(records) -> tuple[list[dict], list]:
    rows, used = [], []
    for ds in dict.fromkeys(r.dataset for r in records if r.kind == "run"):
        for model in table2_order(finished_models(records, ds)):
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
                    mean, std = mean_and_std(vals)
                    rows.append(dict(dataset=ds, model=model, measure=key, attention=mean, attention_std=std,
                                     uniform=float(np.mean(unif)), lift=float(mean / np.mean(unif)),
                                     seeds=len(vals)))
    return rows, used


def _intent_tick(row) -> str:
    """The model and its lift over uniform attention, the number to read."""
    return f"{model_name(row['model'])} (×{row['lift']:.3f})"


def draw_intent(rows, width):
    """One panel per dataset and measure: the attention mass per model (mean ± std over seeds) and the
    same mass under uniform attention as a black line across its bar."""
    cells = list(dict.fromkeys((r["dataset"], r["measure"]) for r in rows))
    labels = ["model attention", "uniform attention"]
    ticks = [_intent_tick(r) for r in rows]
    measures = dict(INTENT_MEASURES)
    titles = [f"{dataset_name(ds)}\n{measures[key]}" for ds, key in cells]
    cols = max(1, min(style.max_columns(width), int(width // (0.5 + 0.3 * len(ticks) / len(cells)))))
    fig, axes = style.panels(width, len(cells), labels, max_cols=cols, titles=titles,
                             row_extra_in=style.text_width_in(ticks) * 0.75)
    for ax, (ds, key), title in zip(axes, cells, titles):
        sel = [r for r in rows if r["dataset"] == ds and r["measure"] == key]
        x = np.arange(len(sel))
        ax.bar(x, [r["attention"] for r in sel], 0.6, yerr=[r["attention_std"] for r in sel],
               label=labels[0], color=style.PALETTE[0], error_kw=dict(lw=0.6))
        ax.hlines([r["uniform"] for r in sel], x - 0.3, x + 0.3, color="black", lw=1.2, label=labels[1], zorder=3)
        _rotated_ticks(ax, [_intent_tick(r) for r in sel])
        ax.set(title=title, ylabel="attention mass", ylim=(0, 1))
        ax.grid(axis="x", visible=False)
    style.legend_below(fig, *style.unique_legend(axes, labels), width)
    return fig


def figure_intent_recovery(records, out_dir):
    """Intent recovery (`sbr_bench.intent`) per model on synthetic data: the attention mass on the clicks
    of the target's concept and on on-intent clicks, next to the same mass under uniform attention."""
    rows, used = intent_rows(records)
    if not rows:
        return None
    stem = style.save(lambda width: draw_intent(rows, width), out_dir, "intent_recovery")
    caption = _caption("Intent recovery on synthetic data: attention mass on the prefix clicks generated by the "
                       "target click's concept and on on-intent, non-noise clicks, mean ± std over seeds; the black "
                       "line is the same mass under uniform attention (a bar above it = the attention finds the "
                       "intent), and the factor after each model is its lift over uniform. See docs/synthetic.md.",
                       used, stem)
    return caption, stem, rows
