"""Multi-seed statistics: mean ± std over seeds, and paired tests of every model against the best one.

The paired tests run on per-example quantities of the test split, averaged over a model's seeds (the test
examples are the same for every model and seed, in the same order):
- MRR@K, HR@K: each example's expected value under random tie-breaking (`evaluate.per_example`), so
  their means are exactly the reported metrics, averaged over seeds.
Each model is compared with the best model (highest mean) by a paired t-test (`scipy.stats.ttest_rel`, the
test the Atten-Mixer paper uses) and a Wilcoxon signed-rank test; p-values are Holm-corrected across the
compared models. Marks follow the corrected t-test: `**` p < 0.01, `*` p < 0.05 (significantly worse than
the best); the best is bolded only if it is significantly better (p < 0.01) than every other model.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

BOLD_ALPHA = 0.01  # the paper bolds at p < .01


def per_example(metric: str, ranks_by_seed: list) -> np.ndarray:
    """Per-example 'MRR@K' / 'HR@K' / 'NDCG@K' (tie-aware, as the tables), averaged over seeds;
    `ranks_by_seed`: the units' ranks.npz records (optimistic and pessimistic ranks)."""
    from .evaluate import per_example as one_seed

    return np.mean([one_seed(metric, r["optimistic"], r["pessimistic"]) for r in ranks_by_seed], axis=0)


def mean_and_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one value) of per-seed values."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def mean_std(per_seed: list[dict]) -> dict:
    """{metric: {"mean", "std", "n"}} over seeds (sample std, ddof=1; 0 for one seed)."""
    out = {}
    for key in sorted({k for m in per_seed for k in m}):
        values = [m[key] for m in per_seed if m.get(key) is not None]
        if values:
            mean, std = mean_and_std(values)
            out[key] = {"mean": mean, "std": std, "n": len(values)}
    return out


def holm(p_values: dict) -> dict:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    names = sorted(p_values, key=lambda n: p_values[n])
    m = len(names)
    adjusted, running = {}, 0.0
    for i, name in enumerate(names):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        adjusted[name] = running
    return adjusted


def paired_tests(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided paired t-test and Wilcoxon p-values for a vs b. Identical vectors, or fewer than two
    pairs, give p = 1 (no evidence of a difference) instead of NaN or an exception."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equal-length vectors, got {a.shape} and {b.shape}")
    diff = a - b
    result = {"n": int(len(diff)), "mean_diff": float(diff.mean()) if len(diff) else 0.0,
              "t_p": 1.0, "wilcoxon_p": 1.0}
    if len(diff) < 2 or not np.any(diff != 0):
        result["note"] = "identical" if len(diff) >= 2 else "too few examples"
        return result
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about ties/zero differences and small samples
        if np.all(diff == diff[0]):  # constant non-zero difference: t is infinite, p -> 0
            result["t_p"] = 0.0
        else:
            t_p = stats.ttest_rel(a, b).pvalue
            result["t_p"] = float(t_p) if math.isfinite(t_p) else 1.0
        try:
            w_p = stats.wilcoxon(a, b, zero_method="wilcox").pvalue
            result["wilcoxon_p"] = float(w_p) if math.isfinite(w_p) else 1.0
        except ValueError:  # e.g. every difference is zero after dropping zeros
            result["wilcoxon_p"] = 1.0
    return result


def mark(p: float) -> str:
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def compare_to_best(values: dict[str, np.ndarray]) -> dict:
    """`values`: model -> per-example vector (already averaged over seeds).

    Returns {"best": name, "best_significant": bool, "models": {name: {... p-values, "mark"}}}."""
    if not values:
        return {"best": None, "best_significant": False, "models": {}}
    means = {name: float(np.mean(v)) if len(v) else 0.0 for name, v in values.items()}
    best = max(means, key=lambda n: means[n])
    others = [n for n in values if n != best]
    tests = {n: paired_tests(values[best], values[n]) for n in others}
    t_holm = holm({n: tests[n]["t_p"] for n in others})
    w_holm = holm({n: tests[n]["wilcoxon_p"] for n in others})
    models = {best: {"mean": means[best], "is_best": True, "mark": ""}}
    for n in others:
        models[n] = dict(tests[n], mean=means[n], is_best=False, t_p_holm=t_holm[n],
                         wilcoxon_p_holm=w_holm[n],
                         # only a model that is really below the best gets a mark
                         mark=mark(t_holm[n]) if means[n] < means[best] else "")
    significant = bool(others) and all(t_holm[n] < BOLD_ALPHA and means[n] < means[best] for n in others)
    return {"best": best, "best_significant": significant, "models": models}
