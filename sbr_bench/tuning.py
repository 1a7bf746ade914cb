"""`Tuning`: every model of an `Experiment` tuned with Optuna under the same budget, on validation MRR@20
only, then its best configuration (and its defaults) trained and tested over the experiment's seeds.

Fair by construction: every model gets the same number of trials (or hours), the same validation split,
the same epochs and early-stopping patience, and its first trial is its own defaults. Trials train on the
training split and are scored on validation; the data they get has no test examples at all.

A tune folder `runs/<id>/` holds:
    tune.toml        the tuning as given (`sbr-bench tune --config` of it tunes again)
    tune.json        what was resolved: models, their base cfg and search spaces, budget, sampler, pruner
    study.db         the Optuna studies, one per model (SQLite; `storage` names any SQLAlchemy database)
    trials/<model>/<trial>/               each trial's result.json and validation curve (epochs.jsonl)
    tuned/, defaults/                     run folders: best and default configurations over the seeds
    tuning.json      per model: trials, best validation MRR@20, best parameters (rewritten after each model)

Resuming (`resume_tuning`) marks the trials the killed process left running as failed ("interrupted"),
runs each again with the same parameters, and counts it once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .callbacks import Callback
from .errors import ConfigError, UserError
from .experiment import Experiment, create_run_dir, from_file, toml_text
from .models.config import validate
from .runs import RunDir

OBJECTIVE = "MRR@20"  # validation MRR@20, the metric every run selects epochs on
TUNE_FILE, TUNE_RECORD, SUMMARY_FILE = "tune.toml", "tune.json", "tuning.json"
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median")
OPTUNA_INSTALL_HINT = "pip install -e '.[tune]'"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
MAX_REPEATS = 20  # proposals in a row of tried configurations after which a time-budgeted study stops


@dataclass
class Tuning:
    """A tuning study: `experiment` says which models, data, epochs, seeds and selection; the rest how.

    Attributes:
        experiment: an `Experiment` (or a dict of its fields).
        budget: trials per model (the first is the model's defaults).
        budget_hours: wall-clock hours of trials per model, instead of (or as well as) `budget`.
        sampler: `tpe` (Optuna's TPESampler, default) or `random`.
        pruner: `none` or `median` (stop a trial whose validation MRR@20 is below the median of earlier
            trials at the same epoch; Optuna's MedianPruner, local engine).
        storage: an SQLAlchemy URL for the studies (default: SQLite `study.db` in the tune folder).
        study_seed: the sampler's seed; trials train with seed 0.
        patience: early-stopping patience of every trainable model (the same rule for all).
        space: search spaces replacing the models' own, {model: {param: {low, high, log} or [values]}}.
        train_defaults: also train the default configurations over the seeds, for the comparison.
    """

    experiment: Experiment = field(default_factory=Experiment)
    budget: int | None = None
    budget_hours: float | None = None
    sampler: str = "tpe"
    pruner: str = "none"
    storage: str | None = None
    study_seed: int = 0
    patience: int = 3
    space: dict = field(default_factory=dict)
    train_defaults: bool = True

    def __post_init__(self):
        if isinstance(self.experiment, dict):
            self.experiment = Experiment.from_dict(self.experiment)
        validate(self, "tune.")
        if self.budget is not None and self.budget < 1:
            raise ConfigError("tune.budget", "must be at least 1 trial", self.budget)
        if self.budget_hours is not None and not self.budget_hours > 0:
            raise ConfigError("tune.budget_hours", "must be more than 0", self.budget_hours)
        for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"tune.{key}", f"expected one of {', '.join(allowed)}", getattr(self, key))
        if self.patience < 0:
            raise ConfigError("tune.patience", "must be 0 (no early stopping) or more", self.patience)
        from .models.space import parse

        if not 0 <= self.study_seed < 2**32:
            raise ConfigError("tune.study_seed", "must lie in 0 .. 2**32 - 1", self.study_seed)
        self.space = {name: parse(name, table) for name, table in self.space.items()}

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path) -> "Tuning":
        """An experiment file with a `[tune]` table (budget, sampler, ..., `[tune.space.MODEL]`).

        Raises:
            UserError: the file is missing or not TOML; ConfigError: a setting is wrong (naming the file).
        """
        return from_file(cls, path)

    @classmethod
    def from_dict(cls, data: dict) -> "Tuning":
        """The experiment's fields, with the tuning's in the table `tune`."""
        data = dict(data)
        tune = data.pop("tune", {})
        if not isinstance(tune, dict):
            raise ConfigError("tune", "expected a table of tuning settings", tune)
        known = [f.name for f in dataclasses.fields(cls) if f.name != "experiment"]
        for key in tune:
            if key not in known:
                raise ConfigError(f"tune.{key}", f"unknown setting; known: {', '.join(known)}")
        return cls(Experiment.from_dict(data), **tune)

    def to_toml(self) -> str:
        from .models.space import as_toml

        tune = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("experiment", "space")}
        tune["space"] = {name: as_toml(space) for name, space in self.space.items()}
        tune["storage"] = _shown_url(self.storage) if self.storage else None  # never a password in a record
        return toml_text(dict(self.experiment.to_dict(), run_id=None, tune=tune))

    def replace(self, **changes) -> "Tuning":
        return dataclasses.replace(self, **changes)

    # --- running ------------------------------------------------------------------------------------
    def run(self, progress: bool = False, engine: str = "local", train: bool = True, command: str | None = None,
            **engine_options) -> "TuneResults":
        """Tune every model into a new tune folder, then (with `train`) train the best and the default
        configurations over the seeds.

        Args:
            engine: `local` (trials one after another here) or `ray` (Ray Tune with Optuna's search
                algorithm; `engine_options`: address, cpus_per_trial, gpus_per_trial, max_concurrent).
            train: False stops after tuning (`resume_tuning` trains later).
        """
        if self.budget is None and self.budget_hours is None:
            raise ConfigError("tune.budget", "give a budget: trials per model (or hours per model)")
        optuna = import_optuna()
        if engine not in ("local", "ray"):
            raise ConfigError("engine", "expected local or ray", engine)
        if engine == "ray" and self.pruner != "none":
            raise ConfigError("tune.pruner", "pruning runs with the local engine (Ray Tune's trials report "
                              "once, at their end)", self.pruner)
        if self.storage:
            make_storage(optuna, self.storage)  # a bad URL is an error before the tune folder exists
        folder, record = self._create(command, engine, engine_options)
        try:
            return _go(folder, record, self.storage, optuna, progress, engine, engine_options, train)
        finally:
            folder.unlock()

    def base_experiment(self, names: list[str]) -> Experiment:
        """The experiment every trial and final run starts from: the same patience for every model."""
        from .models.registry import model_config

        if any("patience" in model_config(name) for name in names):
            return self.experiment.replace(models=names, overrides=dict(self.experiment.overrides,
                                                                         patience=self.patience))
        return self.experiment.replace(models=names)

    def spaces(self, names: list[str]) -> dict:
        """Each model's search space (this tuning's, else the model's own), without the parameters the
        experiment fixes (`overrides`, `model_overrides`)."""
        from .models.registry import search_space, spec_for
        from .models.space import check_space

        for name in self.space:
            if name not in names:
                raise ConfigError(f"tune.space.{name}", f"'{name}' is not among the models ({', '.join(names)})")
        spaces = {}
        for name in names:
            space = check_space(name, self.space[name], spec_for(name).defaults) if name in self.space \
                else search_space(name)
            fixed = set(self.experiment.overrides) | set(self.experiment.model_overrides.get(name, {}))
            spaces[name] = {k: v for k, v in space.items() if k not in fixed}
        return spaces

    def _create(self, command, engine: str, engine_options: dict):
        from .models.space import as_toml
        from .runs import new_run_id

        from .engines import cached_dataset

        dataset = cached_dataset(self.experiment.dataset.spec())[0]  # the trials of this process reuse it
        names = self.experiment.model_names(dataset)
        config = self.base_experiment(names).plan(dataset, command or "python: Tuning(...).run()")
        spaces = self.spaces(names)
        _check_precision(config["cfg"], config["device"], engine, engine_options)
        record = {
            "kind": "tune", "models": names, "cfg": config["cfg"], "dataset": config["dataset"],
            "settings_notes": config["settings_notes"], "selection": config["selection"], "seeds": config["seeds"],
            "device": config["device"], "command": config["command"],
            "spaces": {name: as_toml(space) for name, space in spaces.items()},
            "budget": self.budget, "budget_hours": self.budget_hours, "objective": f"valid {OBJECTIVE}",
            "sampler": sampler_settings(self.sampler, self.study_seed), "pruner": pruner_settings(self.pruner),
            "patience": self.patience, "trial_seed": 0, "train_defaults": self.train_defaults,
            "storage": _shown_url(absolute_sqlite(self.storage)) if self.storage else None,
        }
        run_id = self.experiment.run_id or "tune-" + new_run_id({k: record[k] for k in ("models", "cfg", "spaces")})
        header = "# The tuning of this folder: `sbr-bench tune --config tune.toml` tunes again, into a new folder.\n"
        return create_run_dir(self.experiment.runs_dir, run_id, record, header + self.to_toml(), TuneFolder), record


class TuneFolder(RunDir):
    """`runs/<id>/` of a tuning (see the module docstring): a run folder whose record is tune.json and whose
    experiment file is tune.toml, locked while a process works in it."""

    RECORD, TOML = TUNE_RECORD, TUNE_FILE

    def record(self) -> dict:
        from .runs import read_record

        return read_record(self.config_path, "the tuning's settings are lost; start a new tuning")

    def trial_path(self, model: str, key) -> Path:
        return self.path / "trials" / model / str(key)

    def storage_url(self, record: dict, given: str | None) -> str:
        """`given`, else the recorded URL, else the folder's study.db."""
        if given:
            return given
        if record.get("storage"):
            if "***" in record["storage"]:
                raise ConfigError("tune.storage", "the recorded storage URL hides its password; give it again "
                                  "with --storage", record["storage"])
            return record["storage"]
        return f"sqlite:///{(self.path / 'study.db').resolve()}"


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(f"Optuna is not installed; install the extra with `{OPTUNA_INSTALL_HINT}`") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def sampler_settings(name: str, seed: int) -> dict:
    # Optuna's TPE defaults: 10 random start-up trials, then TPE; recorded so that a report can say so.
    return {"name": name, "seed": seed, **({"n_startup_trials": 10} if name == "tpe" else {})}


def pruner_settings(name: str) -> dict:
    return {"name": name, **({"n_startup_trials": 5, "n_warmup_steps": 0} if name == "median" else {})}


def make_sampler(optuna, settings: dict):
    if settings["name"] == "random":
        return optuna.samplers.RandomSampler(seed=settings["seed"])
    return optuna.samplers.TPESampler(seed=settings["seed"], n_startup_trials=settings["n_startup_trials"])


def make_pruner(optuna, settings: dict):
    if settings["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings["n_startup_trials"],
                                           n_warmup_steps=settings["n_warmup_steps"])
    return optuna.pruners.NopPruner()


def absolute_sqlite(url: str) -> str:
    """A relative SQLite URL made absolute, so that a resume from another folder finds the same file."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def _shown_url(url: str) -> str:
    """A storage URL as recorded: the password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: the error comes when it is opened
        return url


def make_storage(optuna, url: str):
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                          if url.startswith("sqlite") else {})
    except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a database that cannot be reached
        raise ConfigError("tune.storage", f"cannot open the study storage ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})", _shown_url(url)) from None


def study_name(run_id: str, model: str) -> str:
    return f"{run_id}/{model}"


def open_study(optuna, url: str, run_id: str, model: str, record: dict):
    """The model's study in the storage (created on first use)."""
    return optuna.create_study(storage=make_storage(optuna, url), study_name=study_name(run_id, model),
                               direction="maximize", sampler=make_sampler(optuna, record["sampler"]),
                               pruner=make_pruner(optuna, record["pruner"]), load_if_exists=True)


def counted(study) -> list:
    """The trials that used the budget: finished ones, not those a killed process left behind."""
    return used(study.get_trials(deepcopy=False))


def used(trials) -> list:
    return [t for t in trials if t.state.name in FINISHED and not t.user_attrs.get("interrupted")]


def hours_spent(trials) -> float:
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
               if t.datetime_complete and t.datetime_start) / 3600


def remaining(study, record: dict) -> tuple[int | None, float | None]:
    """(trials, seconds) left of the budget; None where the budget has no such limit."""
    done = counted(study)
    trials = None if record["budget"] is None else max(0, record["budget"] - len(done))
    seconds = None if record["budget_hours"] is None else max(0.0, (record["budget_hours"] - hours_spent(done)) * 3600)
    return trials, seconds


def check_study_exists(optuna, folder: TuneFolder, url: str, model: str) -> None:
    """On resume, the study of a model that already has trials must be in the storage: otherwise (a moved
    or deleted database, another --storage) a new study would silently start from scratch."""
    summary = folder.path / SUMMARY_FILE
    if not summary.exists():
        return
    from .io import read_json

    entry = read_json(summary).get("models", {}).get(model, {})
    if entry.get("trials") and study_name(folder.run_id, model) not in optuna.get_all_study_names(
            storage=make_storage(optuna, url)):
        raise ConfigError("tune.storage", f"the study of {model} ({entry['trials']} trials so far) is not in "
                          f"{_shown_url(url)}; give the database it is in with --storage", _shown_url(url))


def close_interrupted(optuna, study, folder: TuneFolder, retry: bool) -> list[int]:
    """Mark the trials left running (their process is gone: the tune folder's lock is ours) as failed
    and interrupted; with `retry`, queue each one's parameters again. Returns their numbers."""
    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna.trial.Trial(study, trial._trial_id).set_user_attr("interrupted", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        if retry:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, **(
                {"defaults": True} if trial.user_attrs.get("defaults") else {})})
        if "folder" in trial.user_attrs:  # the killed trial's weights are of no use
            (folder.path / trial.user_attrs["folder"] / "checkpoint.pt").unlink(missing_ok=True)
        numbers.append(trial.number)
    return numbers


def without_test(dataset):
    """The dataset a trial gets: its test split replaced by an empty one (tuning never sees a test example)."""
    from .data.sessions import Split

    return dataclasses.replace(dataset, test=Split.from_pairs([], []), meta=dict(dataset.meta, test="withheld"))


def run_trial(folder: str, model: str, key: str, params: dict, device: str = "auto", threads: int | None = None,
              callbacks=()) -> dict:
    """Train one trial of `model` with `params` on the training split of the tune folder's dataset and
    return its validation result: {"value": best validation MRR@20, "valid", "best_epoch", ...}. The
    body of a trial on both engines; raises TrainingFailed when the loss diverges."""
    import torch

    from .engines import cached_dataset
    from .io import write_json
    from .models.registry import build_model
    from .runs import Run
    from .training import resolve_device, seed_everything, train_model

    if threads:
        torch.set_num_threads(threads)
    record = TuneFolder(folder).record()
    dataset, fingerprint = cached_dataset(record["dataset"])
    if fingerprint != record["dataset"]["fingerprint"]:
        raise UserError(f"dataset '{record['dataset']['name']}' differs from the one this tuning started with "
                        "(fingerprint mismatch)")
    seed = record["trial_seed"]
    seed_everything(seed)
    built, cfg = build_model(model, dataset.n_items, dict(record["cfg"][model], **params))
    run = Run(TuneFolder(folder).trial_path(model, key), model, seed)
    start = time.perf_counter()
    try:
        summary = train_model(built, without_test(dataset), cfg, run, device=resolve_device(device), seed=seed,
                              progress=False, evaluate_test=False, selection="valid", callbacks=callbacks)
    finally:
        run.checkpoint_path.unlink(missing_ok=True)  # the curve stays in epochs.jsonl; weights are not kept
    valid = summary.get("best_valid") or summary.get("valid") or {}
    result = {"value": float(valid.get(OBJECTIVE, math.nan)), "valid": valid, "params": params,
              "best_epoch": summary.get("best_epoch"), "epochs_trained": len(summary.get("history", [])),
              "seconds": time.perf_counter() - start}
    write_json(run.path / "result.json", result)
    return result


def summary_text(summary: dict) -> str:
    """What each model's tuning found, as a plain-text table."""
    from .runs import format_table

    rows = []
    for name, entry in summary["models"].items():
        if not entry["tuned"]:
            rows.append([name, "-", "-", "-", "no parameters"])
            continue
        best, default = entry["best_value"], entry["defaults_value"]
        spent = f"{entry['trials']} ({entry['pruned']} pruned, {entry['failed']} failed), {entry['hours'] * 60:.1f} min"
        rows.append([name, spent, "-" if default is None else f"{default:.2f}", "-" if best is None else f"{best:.2f}",
                     params_text(entry["best_params"])])
    header = ["model", "trials", f"defaults valid {OBJECTIVE}", f"best valid {OBJECTIVE}", "best parameters"]
    return format_table(header, rows, markdown=False)


class TuneResults:
    """What a tuning produced: its folder, each model's study summary, and the final run folders."""

    def __init__(self, path):
        self.folder = TuneFolder(path)

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def summary(self) -> dict:
        from .runs import read_record

        return read_record(self.path / SUMMARY_FILE, "resume the tuning to write it again")

    def table(self) -> str:
        return summary_text(self.summary)

    @property
    def best_params(self) -> dict:
        return {name: entry["best_params"] for name, entry in self.summary["models"].items()}

    def results(self, which: str = "tuned"):
        """The `Results` of the `tuned` or `defaults` run folder."""
        from .experiment import Results

        return Results.load(self.path / which)

    def __repr__(self) -> str:
        return f"TuneResults({str(self.path)!r})"


def resume_tuning(ref, runs_dir="runs", storage: str | None = None, progress: bool = False, engine: str = "local",
                  train: bool = True, **engine_options) -> TuneResults:
    """Continue a tuning (a tune id under `runs_dir` or its folder): interrupted trials are run again,
    the budget is filled up, then the final runs are trained (or continued)."""
    optuna = import_optuna()
    path = Path(ref) if (Path(ref) / TUNE_RECORD).exists() else Path(runs_dir) / str(ref)
    if not (path / TUNE_RECORD).exists():
        raise ConfigError("resume", f"no tuning found (looked for {Path(ref) / TUNE_RECORD} and "
                          f"{Path(runs_dir) / str(ref) / TUNE_RECORD})", str(ref))
    folder = TuneFolder(path).lock(f"tune --resume {ref}")
    try:
        record = folder.record()
        _check_precision(record["cfg"], record["device"], engine, engine_options)
        return _go(folder, record, storage, optuna, progress, engine, engine_options, train)
    finally:
        folder.unlock()


# --- the steps --------------------------------------------------------------------------------------

def _check_precision(cfgs: dict, device: str, engine: str, engine_options: dict) -> None:
    """Refuse a precision the trials' device lacks before any trial starts (training.check_precisions)."""
    from .training import check_precisions, resolve_device

    if engine == "local":
        check_precisions(cfgs.values(), resolve_device(device))
    else:
        check_precisions(cfgs.values(), None, engine_options.get("gpus_per_trial", 0))


def _go(folder: TuneFolder, record: dict, storage, optuna, progress, engine, engine_options, train) -> TuneResults:
    url = folder.storage_url(record, storage and absolute_sqlite(storage))
    if engine == "ray" and record["pruner"]["name"] != "none":
        raise ConfigError("tune.pruner", "this tuning prunes trials, which runs with the local engine only",
                          record["pruner"]["name"])
    try:
        summary = _tune_models(folder, record, url, optuna, engine, engine_options)
        if train:
            _train_final(folder, record, summary, progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with `sbr-bench tune --resume {folder.path}`", file=sys.stderr)
        raise
    return TuneResults(folder.path)


def _tune_models(folder: TuneFolder, record: dict, url: str, optuna, engine: str, engine_options: dict) -> dict:
    """Fill every model's budget, one model after the other; returns the summary (tuning.json, written
    after each model)."""
    from .models.space import parse

    spaces, studies, summary = {model: parse(model, record["spaces"][model]) for model in record["models"]}, {}, None
    for model, space in spaces.items():
        if not space:
            print(f"[tune {model}] no parameters to tune: its defaults are its tuned configuration", flush=True)
            continue
        check_study_exists(optuna, folder, url, model)
        study = studies[model] = open_study(optuna, url, folder.run_id, model, record)
        again = close_interrupted(optuna, study, folder, retry=True)
        if again:
            print(f"[tune {model}] trial(s) {', '.join(map(str, again))} were interrupted: run again", flush=True)
        defaults = {k: record["cfg"][model][k] for k in space}
        if not study.get_trials(deepcopy=False):  # the first trial: the model's own configuration
            if all(space[k].contains(v) for k, v in defaults.items()):
                study.enqueue_trial(defaults, user_attrs={"defaults": True})
            else:
                print(f"[tune {model}] its defaults lie outside the search space: the first trial is sampled too",
                      flush=True)
        if engine == "ray":
            from .tuning_ray import tune_ray

            tune_ray(folder, model, study, space, record, url, optuna, **engine_options)
            close_interrupted(optuna, study, folder, retry=False)  # trials Ray stopped at the time budget
        else:
            _tune_local(folder, model, study, space, record, optuna)
        summary = _write_summary(folder, record, spaces, studies, url)
    return summary or _write_summary(folder, record, spaces, studies, url)  # also when no model has a space


class Pruning(Callback):
    """A training callback reporting each epoch's validation MRR@20 to an Optuna trial, and stopping the
    trial (optuna.TrialPruned) when its pruner says so."""

    def __init__(self, trial, optuna):
        self.trial, self.optuna = trial, optuna

    def on_epoch_end(self, trainer, row) -> None:
        self.trial.report(row["valid"][OBJECTIVE], row["epoch"])
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(f"pruned after epoch {row['epoch']}")


def _tune_local(folder: TuneFolder, model: str, study, space: dict, record: dict, optuna) -> None:
    from .training import TrainingFailed

    repeats = 0
    while True:
        trials, seconds = remaining(study, record)
        if trials == 0 or seconds == 0:
            return
        if repeats >= MAX_REPEATS:  # a time budget over a small finite space: every configuration was tried
            print(f"[tune {model}] {MAX_REPEATS} proposals in a row repeated tried configurations: stopping",
                  flush=True)
            return
        trial = study.ask()
        params = {key: dist.suggest(trial, key) for key, dist in space.items()}
        label = f"[tune {model} trial {trial.number}]"
        same = next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                     if t.params == params), None)
        if same is not None:  # trials train with one seed: the same parameters give the same value
            trial.set_user_attr("same_as", same.number)
            study.tell(trial, same.value)
            repeats += 1
            print(f"{label} the parameters of trial {same.number} again: its value, without training", flush=True)
            continue
        repeats = 0
        trial.set_user_attr("folder", str(folder.trial_path(model, trial.number).relative_to(folder.path)))
        try:
            result = run_trial(str(folder.path), model, str(trial.number), params, record["device"],
                               callbacks=[Pruning(trial, optuna)] if record["pruner"]["name"] != "none" else [])
        except optuna.TrialPruned as e:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            print(f"{label} {e}", flush=True)
            continue
        except TrainingFailed as e:
            trial.set_user_attr("failed", e.reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"{label} failed: {e.reason}", flush=True)
            continue
        for key in ("best_epoch", "epochs_trained", "seconds"):
            trial.set_user_attr(key, result[key])
        if not math.isfinite(result["value"]):
            trial.set_user_attr("failed", f"validation {OBJECTIVE} is {result['value']}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, result["value"])
        print(f"{label} valid {OBJECTIVE} {result['value']:.2f}  {params_text(params)}"
              f"  (best {study.best_value:.2f}; {len(counted(study))}/{record['budget'] or '-'} trials)", flush=True)


def params_text(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _write_summary(folder: TuneFolder, record: dict, spaces: dict, studies: dict, url: str) -> dict:
    """tuning.json: for each model, the budget it got, its best trial and every trial's outcome (a model
    not reached yet with none)."""
    from .io import write_json

    models = {}
    for model in record["models"]:
        if not spaces[model]:
            models[model] = {"tuned": False, "trials": 0, "best_params": {}, "best_value": None, "hours": 0.0}
            continue
        study = studies.get(model)
        every = study.get_trials(deepcopy=False) if study is not None else []
        done = used(every)
        complete = [t for t in done if t.state.name == "COMPLETE"]
        best = max(complete, key=lambda t: t.value, default=None)
        models[model] = {
            "tuned": True, "trials": len(done), "hours": hours_spent(done),
            "complete": len(complete), "pruned": sum(t.state.name == "PRUNED" for t in done),
            "failed": sum(t.state.name == "FAIL" for t in done),
            "interrupted": sum(bool(t.user_attrs.get("interrupted")) for t in every),
            "best_value": best.value if best else None, "best_trial": best.number if best else None,
            "best_params": dict(best.params) if best else {},
            "defaults_value": next((t.value for t in complete if t.user_attrs.get("defaults")), None),
            "history": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                         **{k: t.user_attrs[k] for k in ("defaults", "retry_of", "same_as", "failed")
                            if k in t.user_attrs}}
                        for t in done],
        }
    summary = {"tune_id": folder.run_id, "budget": record["budget"], "budget_hours": record["budget_hours"],
               "sampler": record["sampler"], "pruner": record["pruner"], "objective": record["objective"],
               "storage": _shown_url(url), "models": models}
    write_json(folder.path / SUMMARY_FILE, summary)
    return summary


def _train_final(folder: TuneFolder, record: dict, summary: dict, progress: bool) -> None:
    """The best configuration of each model (`tuned/`) and its defaults (`defaults/`), over the seeds
    with the run's selection; either continues where a killed process left it."""
    from .experiment import resume

    tuning = Tuning.from_toml(folder.path / TUNE_FILE)
    names = record["models"]
    base = tuning.base_experiment(names).replace(runs_dir=str(folder.path))
    best = {name: summary["models"][name]["best_params"] for name in names}
    runs = {"tuned": base.replace(run_id="tuned", model_overrides={
        name: dict(base.model_overrides.get(name, {}), **best[name]) for name in names
        if best[name] or name in base.model_overrides})}
    if record["train_defaults"]:
        runs["defaults"] = base.replace(run_id="defaults")
    for run_id, experiment in runs.items():
        print(f"[tune] training the {run_id} configurations over {len(experiment.seeds)} seed(s)", flush=True)
        if RunDir(folder.path / run_id).config_path.exists():
            resume(folder.path / run_id, progress=progress)
        else:
            experiment.run(progress, command=f"{record['command']}  # {run_id} configurations")
