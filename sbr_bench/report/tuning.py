"""The report's tuning sections: for every tune folder under the runs folder, the tuned Table 2 beside the
default-settings one (both trained over the same seeds with the same selection), the budget each model
got, its best parameters, and Optuna's optimisation-history and parameter-importance plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..io import read_json, write_text
from ..runs import HEADLINE, RunDir, collect_results, format_cell, selection_caption
from ..tuning import OBJECTIVE, SUMMARY_FILE, TUNE_RECORD, params_text, study_name
from . import style
from .names import model_name
from .records import table2_order
from .tables import to_markdown


def tune_folders(runs_dir) -> list[Path]:
    return sorted(p for p in Path(runs_dir).iterdir() if (p / TUNE_RECORD).exists() and (p / SUMMARY_FILE).exists())


def tuning_sections(runs_dir, out: Path, only=None) -> list[str]:
    """The sections of every tune folder under `runs_dir` (of those named in `only`, when given)."""
    return [_section(folder, out) for folder in tune_folders(runs_dir) if only is None or folder.name in only]


def _results(folder: Path, which: str) -> dict:
    run = RunDir(folder / which)
    return collect_results(run) if run.config_path.exists() else {"models": {}}


def _caption(record: dict, summary: dict) -> list[str]:
    """What the budget was, and a warning for anything that was not the same for every model."""
    tuned = {m: e for m, e in summary["models"].items() if e["tuned"]}
    budget = (f"{record['budget']} trials" if record["budget"] is not None else "") + \
        (" / " if record["budget"] and record["budget_hours"] else "") + \
        (f"{record['budget_hours']:g} hours" if record["budget_hours"] is not None else "")
    sampler, pruner = record["sampler"], record["pruner"]
    epochs = {m: record["cfg"][m].get("epochs") for m in tuned}
    patience = {m: record["cfg"][m].get("patience") for m in tuned}
    lines = [f"Budget: {budget} per model, of Optuna's {sampler['name']} sampler (seed "
             f"{sampler['seed']}" + (f", {sampler['n_startup_trials']} random start-up trials" if "n_startup_trials"
                                     in sampler else "") + f"), pruner {pruner['name']}; the objective is "
             f"{record['objective']} on one validation split (the latest {record['dataset'].get('valid_fraction')} of "
             "the training sessions), the test split unseen; " + _first_trials(tuned) + ". "
             f"Trials trained with seed {record['trial_seed']}; the tuned and default configurations were then "
             f"trained over seeds {record['seeds']}, {record['selection']} selection. {selection_caption(record['selection'])}"]
    warn = []
    if len({e["trials"] for e in tuned.values()}) > 1:
        warn.append("the models did not get the same number of trials: " +
                    ", ".join(f"{m} {e['trials']}" for m, e in tuned.items()))
    for what, values in (("epochs", epochs), ("patience", patience)):
        shown = {m: v for m, v in values.items() if v is not None}
        if len(set(shown.values())) > 1:
            warn.append(f"{what} differ: " + ", ".join(f"{m} {v}" for m, v in shown.items()))
    if warn:
        lines.append("**Budgets differ** – " + "; ".join(warn) + ".")
    return lines


def _first_trials(tuned: dict) -> str:
    """Whether every model's study started from its defaults (not when they lie outside its space)."""
    without = [m for m, e in tuned.items() if not any(t.get("defaults") for t in e.get("history", []))]
    if not without:
        return "every model's first trial is its defaults"
    return f"every model's first trial is its defaults but for {', '.join(without)} (defaults outside the space)"


def _section(folder: Path, out: Path) -> str:
    record, summary = read_json(folder / TUNE_RECORD), read_json(folder / SUMMARY_FILE)
    tuned, defaults = _results(folder, "tuned"), _results(folder, "defaults")
    rows, tidy = [], []
    for model in table2_order(summary["models"]):
        entry = summary["models"][model]
        row = {"model": model, "trials (minutes)": f"{entry['trials']} ({entry['hours'] * 60:.1f})" if entry["tuned"]
               else "no parameters",
               f"best valid {OBJECTIVE}": f"{entry['best_value']:.2f}" if entry.get("best_value") is not None else "–"}
        for which, results in (("tuned", tuned), ("defaults", defaults)):
            stats = results["models"].get(model, {}).get("test", {})
            for metric in HEADLINE:
                stat = stats.get(metric)
                row[f"{which} {metric}"] = format_cell(stat["mean"], stat["std"], stat["n"]) if stat else "–"
                if stat:
                    tidy.append({"tune": folder.name, "model": model, "configuration": which, "metric": metric,
                                 **{k: stats[metric][k] for k in ("mean", "std", "n")}})
        row["best parameters"] = params_text(entry["best_params"]) or "–"
        rows.append(row)
    stem = f"tuning_{folder.name}"
    write_text(out / f"{stem}.csv", pd.DataFrame(tidy).to_csv(index=False))
    table = pd.DataFrame(rows)
    parts = [f"## Tuned under equal budgets: {folder.name} ({record['dataset'].get('resolved_name')})\n",
             "\n\n".join(_caption(record, summary)) + "\n", to_markdown(table),
             f"\nFiles: `{stem}.csv` (exact numbers); the tune folder's tuning.json has every trial.\n"]
    parts += _plots(folder, record, summary, out)
    return "\n".join(parts)


def _plots(folder: Path, record: dict, summary: dict, out: Path) -> list[str]:
    """Optuna's optimisation history and parameter importances of each tuned model's study."""
    try:
        import optuna
        import optuna.visualization.matplotlib as plots
    except ImportError:
        return ["Plots: Optuna is not installed (`pip install -e '.[tune]'`).\n"]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{(folder / 'study.db').resolve()}" if (folder / "study.db").exists() else summary["storage"]
    parts = []
    for model, entry in summary["models"].items():
        if not entry["tuned"] or not entry["complete"]:
            continue
        try:
            study = optuna.load_study(study_name=study_name(folder.name, model), storage=url)
        except Exception as e:  # noqa: BLE001 - a moved or unreachable database: say so, keep the report
            parts.append(f"Plots of {model}: the study cannot be read from {url} ({type(e).__name__}).\n")
            continue
        made = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            history = _optuna_figure(lambda: plots.plot_optimization_history(
                study, target_name=f"validation {OBJECTIVE}"), f"{model_name(model)}: optimisation history")
            made.append(style.save(history, out, f"tuning_{folder.name}_{model}_history"))
            if entry["complete"] >= 2 and len(study.best_params) > 0:
                importances = _optuna_figure(lambda: plots.plot_param_importances(study),
                                             f"{model_name(model)}: parameter importances (fANOVA)")
                try:
                    made.append(style.save(importances, out, f"tuning_{folder.name}_{model}_importance"))
                except (RuntimeError, ValueError) as e:  # e.g. every trial with the same parameters
                    parts.append(f"Importances of {model}: not computable ({e}).\n")
        parts += [f"![{model}]({stem}.png)\n" for stem in made]
    return parts


def _optuna_figure(plot, title: str):
    """A `style.save` draw function around one of Optuna's matplotlib plots, sized by the report's style."""
    def draw(width):
        ax = plot()
        ax.figure.set_size_inches(width, width * 0.62)
        _title(ax, title)
        return ax.figure
    return draw


def _title(ax, text: str) -> None:
    """Our title in place of Optuna's (which it puts at the left or the centre)."""
    for loc in ("left", "right"):
        ax.set_title("", loc=loc)
    ax.set_title(text)
