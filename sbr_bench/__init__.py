"""sbr-bench: a benchmark suite for session-based recommendation on PyTorch Geometric.

The library first, the CLI (`sbr-bench`) a thin layer on top:

- `Experiment(models=..., dataset=..., seeds=...).run() -> Results`: a benchmark run into a run folder;
  `Experiment.from_toml(path)` reads an experiment file (every run writes its own, `experiment.toml`).
- `load_dataset(name, ...)`, `build_model(name, n_items, **overrides)`, `train(model, dataset, ...)`,
  `Evaluator(n_items)`: the pieces, usable on their own.
- `Tuning(experiment, budget=N).run() -> TuneResults`: every model tuned with Optuna under the same
  budget on validation only, then its best and default configurations trained over the seeds.
- `register_model`: add a model (or declare it in the `sbr_bench.models` entry-point group of a package).
"""

__version__ = "0.1.0"

__all__ = [
    "Experiment", "DataConfig", "Results", "resume", "load_dataset", "build_model", "train", "Evaluator",
    "register_model", "ModelSpec", "BaselineSpec", "list_models", "ConfigError", "DataFormatError", "UserError",
    "Tuning", "TuneResults", "resume_tuning",
]


def __getattr__(name):
    """Import on first use: `import sbr_bench` stays light (the CLI's start-up, Ray workers)."""
    import importlib

    homes = {"Experiment": "experiment", "DataConfig": "experiment", "Results": "experiment", "resume": "experiment",
             "load_dataset": "data.dataset", "train": "training", "Evaluator": "evaluate",
             "register_model": "models.registry", "ModelSpec": "models.registry", "BaselineSpec": "models.registry",
             "list_models": "models.registry", "ConfigError": "errors", "DataFormatError": "errors",
             "UserError": "errors", "Tuning": "tuning", "TuneResults": "tuning", "resume_tuning": "tuning"}
    if name not in homes:
        raise AttributeError(f"module 'sbr_bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sbr_bench.{homes[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))


def build_model(name: str, n_items: int, **overrides):
    """Model `name` (`sbr-bench models list`) for items 1..n_items, with its paper/reference defaults and
    `overrides` (e.g. `dim=64`); see `sbr_bench.models.registry.build_model` for the (model, cfg) form.

    Returns:
        The model: an `SBRModel`, or a counting baseline with `fit(split)` and scores; its full
        parameters, training settings included, are in `model.cfg` (what `train` uses by default).
    """
    from .models.registry import build_model as build

    model, cfg = build(name, n_items, overrides)
    model.cfg = cfg
    return model
