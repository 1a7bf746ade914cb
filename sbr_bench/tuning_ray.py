"""The `ray` engine of `sbr_bench.tuning`: Ray Tune runs the trials (one per Ray Tune trial, CPUs and GPUs
per trial as given), Optuna's search algorithm (`OptunaSearch`) proposes them from the study in the same
storage as the local engine, so a tuning can switch engines on resume. Ray is optional and imported here."""

from __future__ import annotations

from .errors import ConfigError


def _trial(config: dict, folder: str, model: str, device: str, threads: int) -> None:
    """One Ray Tune trial: `sbr_bench.tuning.run_trial` in a Ray worker, its result reported to Ray Tune."""
    from ray import tune

    from .tuning import run_trial

    key = f"ray-{tune.get_context().get_trial_id()}"
    tune.report(run_trial(folder, model, key, config, device, threads))


class _Suggest:
    """The define-by-run space for OptunaSearch (a class: Ray pickles its searcher's state)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> None:
        for key, dist in self.space.items():
            dist.suggest(trial, key)


def tune_ray(folder, model: str, study, space: dict, record: dict, url: str, optuna, address: str | None = None,
             cpus_per_trial: float = 1, gpus_per_trial: float = 0, max_concurrent: int | None = None) -> None:
    """Fill `model`'s budget (`study`, in the storage at `url`) with Ray Tune trials. A Ray instance already started (ray.init) is used as it
    is; otherwise connect to `address` or start a local one, and stop it at the end."""
    from .engines import import_ray
    from .tuning import make_sampler, make_storage, remaining, study_name

    ray = import_ray()
    try:
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("engine", "Ray Tune is not installed; install the extra with `pip install -e '.[ray]'`",
                          "ray") from None
    trials, seconds = remaining(study, record)
    if trials == 0 or seconds == 0:
        return
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
        except ConnectionError as e:
            raise ConfigError("address", f"cannot connect to a Ray cluster ({e})", address) from None
        started = True
    try:
        searcher = OptunaSearch(space=_Suggest(space), metric="value", mode="max", sampler=make_sampler(optuna, record["sampler"]),
                                study_name=study_name(folder.run_id, model), storage=make_storage(optuna, url))
        if max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, folder=str(folder.path.resolve()), model=model, device=record["device"],
                                 threads=max(1, int(cpus_per_trial))),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1 if trials is None else trials, time_budget_s=seconds,
            reuse_actors=True),
            run_config=tune.RunConfig(name=model, storage_path=str((folder.path / "ray").resolve()), verbose=0))
        for result in tuner.fit():
            outcome = (f"failed: {type(result.error).__name__}" if result.error else
                       f"valid MRR@20 {result.metrics.get('value', float('nan')):.2f}")
            print(f"[tune {model} ray] {outcome}  {result.config}", flush=True)
    finally:
        if started:
            ray.shutdown()
